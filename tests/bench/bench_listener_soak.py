"""Soak of the embedded node's public tls:// listener while real daemons route through it.

    .venv/bin/python -m tests.bench.bench_listener_soak [--seconds 30] [--stalled 400]

Loopback only, bounded in count and time. One `mesh up` process (embedded backend,
node N) listens on tls://127.0.0.1:P and dials two real yggdrasil 0.5.12 daemons A and
B (IfName none, no root). While the bench floods N's listener from 10 loopback source
addresses with

- stalled handshakes (connect, never send a byte; redial when closed),
- half ClientHellos (the first bytes of a real TLS ClientHello, then silence),
- garbage (1 KiB of random bytes),
- reconnects (a full TLS handshake, read N's `meta`, hang up),

daemon A keeps probing daemon B through N (`debug_remoteGetSelf`, routed by N's
router: A and B only peer with N). Printed figures: N's RSS idle / peak / after the
flood (after must be within 10 % of idle), how long N held each stalled connection it
accepted, how many were refused at once, probes lost, and how much N logged.
Not a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.lab.lab import Daemon, daemon_available, free_port, loopback_daemon

MESH = [sys.executable, "-m", "core.cli.main"]
SOURCES = [f"127.0.0.{10 + i}" for i in range(10)]
HANDSHAKE_TIMEOUT = 6.0  # the node's default (yggdrasil-go's)
CLIENT_LIMIT = 30.0  # a flood client gives up waiting for the node to close after this


@dataclass
class Figures:
    held: list[float] = field(default_factory=list)  # stalled connections N accepted
    never_accepted: int = 0  # still open at CLIENT_LIMIT (held, or lost in the listen queue)
    refused: int = 0  # closed by N at once (caps)
    half_hello: list[float] = field(default_factory=list)
    garbage: int = 0
    reconnects: int = 0
    connect_errors: int = 0
    probes_sent: int = 0
    probes_lost: int = 0
    rss_samples: list[int] = field(default_factory=list)


def listen_overflows() -> int:
    """TcpExt ListenOverflows of this (loopback) network namespace."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True))["ListenOverflows"])
    return 0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def client_hello() -> bytes:
    """The first flight of a real TLS client (a ClientHello), from a memory BIO."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_side=False)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


async def _dial(
    port: int, fig: Figures, tls: ssl.SSLContext | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """A connection from one of :data:`SOURCES`; None (counted, after a pause) if it fails."""
    try:
        return await asyncio.wait_for(
            asyncio.open_connection(
                "127.0.0.1", port, local_addr=(random.choice(SOURCES), 0), ssl=tls
            ),
            10,
        )
    except (OSError, TimeoutError):
        fig.connect_errors += 1
        await asyncio.sleep(0.2)
        return None


async def _until_eof(reader: asyncio.StreamReader, limit: float) -> float:
    start = time.monotonic()
    with contextlib.suppress(ConnectionError, TimeoutError):
        async with asyncio.timeout(limit):
            while await reader.read(65536):
                pass
    return time.monotonic() - start


def _close(writer: asyncio.StreamWriter) -> None:
    writer.transport.abort()


async def stalled(port: int, stop: float, fig: Figures, half: bytes | None) -> None:
    while time.monotonic() < stop:
        if (streams := await _dial(port, fig)) is None:
            continue
        reader, writer = streams
        if half is not None:
            writer.write(half)
        held = await _until_eof(reader, CLIENT_LIMIT)
        _close(writer)
        if held < HANDSHAKE_TIMEOUT / 2:  # closed at accept (a cap), late only under load
            fig.refused += 1
            await asyncio.sleep(0.05)  # bounded redial rate
        elif held >= CLIENT_LIMIT - 0.1:
            # held past any deadline, or never accepted: with the accept queue full the
            # kernel drops the final ACK and the client believes it is connected
            fig.never_accepted += 1
        elif half is not None:
            fig.half_hello.append(held)
        else:
            fig.held.append(held)


async def garbage(port: int, stop: float, fig: Figures) -> None:
    while time.monotonic() < stop:
        if (streams := await _dial(port, fig)) is None:
            continue
        reader, writer = streams
        writer.write(os.urandom(1024))
        await _until_eof(reader, 15)
        _close(writer)
        fig.garbage += 1
        await asyncio.sleep(0.05)


async def reconnects(port: int, stop: float, fig: Figures) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    while time.monotonic() < stop:
        if (streams := await _dial(port, fig, ctx)) is None:
            continue
        reader, writer = streams
        with contextlib.suppress(OSError, TimeoutError):
            if await asyncio.wait_for(reader.read(4), 10) == b"meta":
                fig.reconnects += 1
        _close(writer)
        await asyncio.sleep(0.05)


async def probe(a: Daemon, b: Daemon, stop: float, fig: Figures, interval: float) -> None:
    """A asks B for its self info through N, once per ``interval``."""
    while time.monotonic() < stop:
        started = time.monotonic()
        fig.probes_sent += 1
        try:
            reply = await asyncio.wait_for(
                asyncio.to_thread(a.ctl, "debug_remoteGetSelf", key=b.public_key.hex()), 10
            )
            if b.public_key.hex() not in json.dumps(reply):
                fig.probes_lost += 1
        except Exception:
            fig.probes_lost += 1
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))


async def sample_rss(pid: int, stop: float, fig: Figures) -> None:
    while time.monotonic() < stop:
        fig.rss_samples.append(rss_kib(pid))
        await asyncio.sleep(0.5)


def wait_status(data: Path, node: subprocess.Popen[bytes], timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.poll() is not None:
            raise RuntimeError("mesh up exited")
        out = subprocess.run(
            [*MESH, "--data-dir", str(data), "status", "--json"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        if out.returncode == 0:
            status: dict[str, object] = json.loads(out.stdout)
            if status.get("node") == "running":
                return status
        time.sleep(0.3)
    raise RuntimeError("mesh up did not come up")


def peers_up(data: Path) -> int:
    out = subprocess.run(
        [*MESH, "--data-dir", str(data), "peers", "--json"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return sum(1 for p in json.loads(out.stdout) if p["up"]) if out.returncode == 0 else 0


async def warm_up(args: argparse.Namespace, port: int, a: Daemon, b: Daemon, fig: Figures) -> None:
    stop = time.monotonic() + HANDSHAKE_TIMEOUT + 2
    scratch = Figures()
    hello = client_hello()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(probe(a, b, stop, fig, 0.5))
        tg.create_task(stalled(port, time.monotonic() + 1, scratch, None))
        tg.create_task(stalled(port, time.monotonic() + 1, scratch, hello[: len(hello) // 2]))
        tg.create_task(garbage(port, time.monotonic() + 1, scratch))
        tg.create_task(reconnects(port, time.monotonic() + 1, scratch))


async def flood(args: argparse.Namespace, port: int, pid: int, a: Daemon, b: Daemon) -> Figures:
    fig = Figures()
    loop_stop = time.monotonic() + args.seconds
    hello = client_hello()
    half = hello[: len(hello) // 2]
    async with asyncio.TaskGroup() as tg:
        tg.create_task(probe(a, b, loop_stop, fig, args.probe_interval))
        tg.create_task(sample_rss(pid, loop_stop + 8, fig))
        for _ in range(args.stalled):
            tg.create_task(stalled(port, loop_stop, fig, None))
        for _ in range(args.half_hello):
            tg.create_task(stalled(port, loop_stop, fig, half))
        for _ in range(args.garbage):
            tg.create_task(garbage(port, loop_stop, fig))
        for _ in range(args.reconnects):
            tg.create_task(reconnects(port, loop_stop, fig))
    return fig


def _ms(values: list[float]) -> str:
    if not values:
        return "none"
    values = sorted(values)
    p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
    return (
        f"n={len(values)} median {statistics.median(values):.2f} s, p99 {p99:.2f} s, "
        f"max {values[-1]:.2f} s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="flood duration")
    parser.add_argument("--stalled", type=int, default=400, help="stalled-handshake clients")
    parser.add_argument("--half-hello", type=int, default=50, help="half-ClientHello clients")
    parser.add_argument("--garbage", type=int, default=20, help="garbage clients")
    parser.add_argument("--reconnects", type=int, default=20, help="reconnecting TLS clients")
    parser.add_argument("--probe-interval", type=float, default=1.0)
    args = parser.parse_args()
    ok, why = daemon_available()
    if not ok:
        print(f"cannot run: {why}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="hn-soak-") as tmp:
        return run(args, Path(tmp))


def run(args: argparse.Namespace, tmp: Path) -> int:
    a_port, b_port, listen_port = free_port(), free_port(), free_port()
    a = loopback_daemon(tmp / "a", listen=[f"tcp://127.0.0.1:{a_port}"])
    b = loopback_daemon(tmp / "b", listen=[f"tcp://127.0.0.1:{b_port}"])
    data = tmp / "node"
    log_path = tmp / "node.log"
    node: subprocess.Popen[bytes] | None = None
    try:
        a.start()
        b.start()
        with log_path.open("wb") as log:
            node = subprocess.Popen(
                [*MESH, "--data-dir", str(data), "up", "--backend", "embedded",
                 "--no-multicast", "--no-services",
                 "--listen", f"tls://127.0.0.1:{listen_port}",
                 "--peer", f"tcp://127.0.0.1:{a_port}", "--peer", f"tcp://127.0.0.1:{b_port}"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_status(data, node, 60)
        deadline = time.monotonic() + 30
        while peers_up(data) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("the daemons did not link to the node")
            time.sleep(0.3)
        # warm up: the probe path and one connection of each kind (first TLS handshake,
        # first refusal...), then the idle figure
        warm = Figures()
        asyncio.run(warm_up(args, listen_port, a, b, warm))
        time.sleep(3)
        overflows = listen_overflows()
        idle = rss_kib(node.pid)
        log_before = log_path.stat().st_size
        print(
            f"node pid {node.pid}, idle RSS {idle / 1024:.1f} MiB; warm-up probes "
            f"{warm.probes_sent - warm.probes_lost}/{warm.probes_sent}; flooding "
            f"tls://127.0.0.1:{listen_port} for {args.seconds:g} s from {len(SOURCES)} "
            f"sources",
            flush=True,
        )
        started = time.monotonic()
        fig = asyncio.run(flood(args, listen_port, node.pid, a, b))
        flood_time = time.monotonic() - started
        time.sleep(5)
        after = rss_kib(node.pid)
        peak = max(fig.rss_samples, default=after)
        logged = log_path.stat().st_size - log_before
        alive = node.poll() is None
        within = after <= idle * 1.10
        print(f"flood ran {flood_time:.1f} s (clients stop at the deadline, then drain)")
        print(f"RSS idle {idle / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB, "
              f"after {after / 1024:.1f} MiB ({100 * (after - idle) / idle:+.1f} %, "
              f"{'within' if within else 'NOT within'} 10 % of idle)")  # fmt: skip
        print(f"stalled connections held by the node: {_ms(fig.held)}")
        lost_in_kernel = listen_overflows() - overflows
        print(f"stalled connections still open when the client gave up ({CLIENT_LIMIT:g} s): "
              f"{fig.never_accepted} (held by the node, or lost in the kernel's full listen "
              f"queue: ListenOverflows +{lost_in_kernel})")  # fmt: skip
        print(f"half-ClientHello connections held:    {_ms(fig.half_hello)}")
        print(f"refused at once (caps): {fig.refused}; garbage connections: {fig.garbage}; "
              f"TLS reconnects: {fig.reconnects}; failed: {fig.connect_errors}")  # fmt: skip
        print(f"probes A->B through the node: {fig.probes_sent} sent, {fig.probes_lost} lost")
        print(f"node log during the flood: {logged} bytes; node alive: {alive}")
        return 0 if (within and alive and fig.probes_lost == 0) else 1
    finally:
        if node is not None and node.poll() is None:
            node.send_signal(signal.SIGINT)
            try:
                node.wait(20)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
        a.stop()
        b.stop()


if __name__ == "__main__":
    sys.exit(main())
