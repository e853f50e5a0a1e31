"""Embedded node vs the real daemon vs raw veth, side by side in one lab run.

    sudo .venv/bin/python -m tests.bench.bench_embedded [--mb 16] [--pings 40] [--carriers-only]

Lab: hosts ``a`` and ``b`` (network namespaces) run yggdrasil 0.5.12 daemons peered
over a veth; an embedded node runs in this process (root namespace) and peers with
``a`` over a second veth; a second embedded node peers with the first over loopback.

Paths compared:
- raw veth:            kernel TCP between the a-b link addresses (the ceiling);
- daemon↔daemon:       kernel TCP/ICMP/UDP over the TUNs (a ↔ b);
- embedded→daemon:     this process's userspace stack → kernel in a (and back);
- embedded↔embedded:   two in-process embedded nodes over a loopback link.

Figures: ICMPv6 echo RTT (median, p90), UDP packets/s at the receiver and CPU seconds
per 1,000 packets (for the embedded node: its event-loop thread; for the daemon: the
receiving daemon process), TCP bulk throughput (MB/s, median of 3), 32-byte TCP round
trip (median), idle RSS of an embedded `mesh up` process. Ratios against daemon↔daemon.
Carriers: embedded→daemon TCP throughput, 32-byte round trip and the event-loop thread's
CPU seconds per MB over tcp://, tls://, quic:// and ws:// links, side by side (a fresh
embedded node per carrier, peered only with daemon a over that scheme).
The machine is shared and noisy: read the ratios, not the absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from core.config import NodeConfig
from core.identity import Identity
from core.node import Node
from tests.lab.lab import Daemon, Host, Lab, RootLink

CHUNK = 256 * 1024
CARRIER_PORTS = {"tcp": 7002, "tls": 7003, "quic": 7004, "ws": 7005}  # daemon a, root veth


def _cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _daemon_pid(daemon: Daemon) -> int:
    return daemon.pid


# -- kernel-side helpers (blocking sockets in threads: the raw baseline) ------------------
def _kernel_sink(host: Host, addr: str) -> tuple[socket.socket, int]:
    s = host.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.bind((addr, 0))
    s.listen(4)
    return s, s.getsockname()[1]


def _drain_one(listener: socket.socket, result: list[float]) -> None:
    conn, _ = listener.accept()
    buf = bytearray(CHUNK)
    total = 0
    start = None
    while n := conn.recv_into(buf):
        if start is None:
            start = time.perf_counter()
        total += n
    result.append(total / (time.perf_counter() - (start or time.perf_counter())) / 1e6)
    conn.close()


def _kernel_echo_one(listener: socket.socket) -> None:
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with contextlib.suppress(ConnectionResetError):  # the measuring side may reset
        while data := conn.recv(4096):
            conn.sendall(data)
    conn.close()


def kernel_throughput(src: Host, dst: Host, dst_addr: str, mb: int) -> float:
    listener, port = _kernel_sink(dst, dst_addr)
    result: list[float] = []
    t = threading.Thread(target=_drain_one, args=(listener, result))
    t.start()
    c = src.socket(socket.AF_INET6, socket.SOCK_STREAM)
    c.connect((dst_addr, port))
    block = os.urandom(CHUNK)
    for _ in range(mb * 1024 * 1024 // CHUNK):
        c.sendall(block)
    c.close()
    t.join(120)
    listener.close()
    return result[0]


def kernel_rtt(src: Host, dst: Host, dst_addr: str, rounds: int) -> float:
    listener, port = _kernel_sink(dst, dst_addr)
    t = threading.Thread(target=_kernel_echo_one, args=(listener,))
    t.start()
    c = src.socket(socket.AF_INET6, socket.SOCK_STREAM)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.connect((dst_addr, port))
    msg = b"x" * 32
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        c.sendall(msg)
        got = 0
        while got < 32:
            got += len(c.recv(64))
        times.append(time.perf_counter() - t0)
    c.close()
    t.join(30)
    listener.close()
    return statistics.median(times) * 1000


def ping_stats(host: Host, target: str, count: int) -> tuple[float, float]:
    out = host.run("ping", "-c", str(count), "-i", "0.02", "-W", "2", target, check=False).stdout
    rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]
    return statistics.median(rtts), statistics.quantiles(rtts, n=10)[-1]


# -- embedded-side measurements -----------------------------------------------------------
async def embedded_throughput(node: Node, target: str, listener: socket.socket, mb: int) -> float:
    result: list[float] = []
    t = threading.Thread(target=_drain_one, args=(listener, result))
    t.start()
    _, writer = await node.open_connection(target, listener.getsockname()[1])
    block = os.urandom(CHUNK)
    for _ in range(mb * 1024 * 1024 // CHUNK):
        writer.write(block)
        await writer.drain()
    writer.close()
    await asyncio.to_thread(t.join, 120)
    listener.close()
    return result[0]


def _rate_sink() -> tuple[asyncio.Future[float], Any]:
    """A stream callback that reads to EOF and resolves to the MB/s it saw."""
    done: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def sink(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        total, start = 0, None
        while data := await r.read(CHUNK):
            start = start or time.perf_counter()
            total += len(data)
        done.set_result(total / (time.perf_counter() - (start or 0)) / 1e6)
        w.close()

    return done, sink


async def embedded_receive_throughput(node: Node, sender: Host, port: int, mb: int) -> float:
    done, sink = _rate_sink()

    server = await node.start_server(sink, port)

    def send() -> None:
        c = sender.socket(socket.AF_INET6, socket.SOCK_STREAM)
        c.connect((str(node.address), port))
        block = os.urandom(CHUNK)
        for _ in range(mb * 1024 * 1024 // CHUNK):
            c.sendall(block)
        c.close()

    await asyncio.to_thread(send)
    rate = await asyncio.wait_for(done, 120)
    server.close()
    return rate


async def embedded_pair_throughput(a: Node, b: Node, mb: int, port: int) -> float:
    done, sink = _rate_sink()

    server = await a.start_server(sink, port)
    _, writer = await b.open_connection(a.address, port)
    block = os.urandom(CHUNK)
    for _ in range(mb * 1024 * 1024 // CHUNK):
        writer.write(block)
        await writer.drain()
    writer.close()
    rate = await asyncio.wait_for(done, 120)
    server.close()
    return rate


async def embedded_rtt(node: Node, target: str, port: int, rounds: int) -> float:
    reader, writer = await node.open_connection(target, port)
    msg = b"x" * 32
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        writer.write(msg)
        got = 0
        while got < 32:
            got += len(await reader.read(64))
        times.append(time.perf_counter() - t0)
    writer.close()
    return statistics.median(times) * 1000


async def embedded_echo_server(node: Node, port: int) -> Any:
    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(4096):
            w.write(data)
        w.close()

    return await node.start_server(echo, port)


def _udp_counter(host: Host, addr: str) -> tuple[socket.socket, int, list[int], threading.Thread]:
    """A kernel UDP socket in ``host`` counting datagrams until 1 s of silence."""
    rx = host.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    rx.bind((addr, 0))
    rx.settimeout(1.0)
    count = [0]

    def receive() -> None:
        while True:
            try:
                rx.recv(2048)
            except TimeoutError:
                return
            count[0] += 1

    t = threading.Thread(target=receive)
    t.start()
    return rx, rx.getsockname()[1], count, t


async def udp_rate_embedded(node: Node, host: Host, addr: str, packets: int) -> tuple[float, float]:
    """Embedded → kernel UDP: packets/s at the receiver, embedded CPU s per 1,000 packets."""
    rx, port, count, t = _udp_counter(host, addr)
    transport, _ = await node.create_datagram_endpoint(asyncio.DatagramProtocol)
    payload = b"p" * 64
    cpu0, t0 = time.thread_time(), time.perf_counter()
    for i in range(packets):
        transport.sendto(payload, (addr, port))
        if i % 200 == 199:
            await asyncio.sleep(0)
    cpu = time.thread_time() - cpu0
    elapsed = time.perf_counter() - t0
    await asyncio.to_thread(t.join, 30)
    transport.close()
    rx.close()
    return count[0] / elapsed, cpu / packets * 1000


def udp_rate_kernel(
    src: Host, dst: Host, addr: str, packets: int, daemon: Daemon
) -> tuple[float, float]:
    rx, port, count, t = _udp_counter(dst, addr)
    tx = src.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    payload = b"p" * 64
    cpu0, t0 = _cpu_of(daemon.pid), time.perf_counter()
    for _ in range(packets):
        tx.sendto(payload, (addr, port))
    elapsed = time.perf_counter() - t0
    t.join(30)
    cpu = _cpu_of(daemon.pid) - cpu0
    tx.close()
    rx.close()
    return count[0] / elapsed, cpu / max(count[0], 1) * 1000


def idle_rss_mb() -> float:
    """RSS of an idle embedded `mesh up` process (no services, no multicast)."""
    with tempfile.TemporaryDirectory() as d:
        proc = subprocess.Popen(
            [sys.executable, "-m", "core.cli.main", "--data-dir", d, "up", "--no-multicast",
             "--backend", "embedded", "--no-services"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not Path(d, "control.sock").exists():
                time.sleep(0.2)
            time.sleep(3)
            rss = int(Path(f"/proc/{proc.pid}/status").read_text().split("VmRSS:")[1].split()[0])
        finally:
            proc.terminate()
            proc.wait(20)
    return rss / 1024


async def wait_path(node: Node, target: str) -> None:
    for _ in range(60):
        if (await node.ping(target, count=1, timeout=1))[0] is not None:
            return
    raise RuntimeError(f"no path from the embedded node to {target}")


def row(name: str, values: list[str]) -> None:
    print(f"{name:<34}" + "".join(f"{v:>18}" for v in values))


def build_lab(lab: Lab) -> tuple[Host, Host, str, Daemon, Daemon, RootLink]:
    """Hosts a and b with daemons peered over a veth; a veth from here into a."""
    a, b = lab.host("a"), lab.host("b")
    la, _ = lab.link(a, b)
    root = a.link_root(0xEF)
    carriers = [f"{s}://[{root.host_addr}]:{port}" for s, port in CARRIER_PORTS.items()]
    da = a.start_daemon(listen=[a.listen_uri(b, 7001), *carriers])
    db = b.start_daemon(peers=[a.peer_uri(b, 7001)])
    lab.wait_peered(da, db)
    lab.wait_reachable(b, da.address)
    return a, b, str(la), da, db, root


async def main(args: argparse.Namespace) -> None:
    with Lab("bx") as lab, tempfile.TemporaryDirectory() as tmp:
        a, b, la, da, _, root = build_lab(lab)
        e1 = await Node.open(
            NodeConfig(data_dir=Path(tmp, "e1"), backend="embedded",
                       peers=(f"tcp://[{root.host_addr}]:7002",), listen=("tcp://127.0.0.1:0",)),
            Identity.generate(),
        )  # fmt: skip
        loop_uri = (await e1.status())["backend_status"]["listening"][0]
        e2 = await Node.open(
            NodeConfig(data_dir=Path(tmp, "e2"), backend="embedded", peers=(loop_uri,)),
            Identity.generate(),
        )
        try:
            await wait_path(e1, str(da.address))
            await wait_path(e2, str(e1.address))
            if not args.carriers_only:
                await report(args, a, b, da, la, e1, e2)
            await carriers_report(args, a, da, root, Path(tmp))
        finally:
            await e2.close()
            await e1.close()
            root.close()


async def report(
    args: argparse.Namespace, a: Host, b: Host, da: Daemon, la: str, e1: Node, e2: Node
) -> None:
    ya = str(da.address)
    print(f"lab: 2 daemons (yggdrasil 0.5.12), 2 embedded nodes; {args.mb} MB transfers, "
          f"{args.pings} pings, {args.packets} UDP packets; medians\n")  # fmt: skip

    print("ICMPv6 echo RTT (ms)")
    row("", ["median", "p90"])
    dd = await asyncio.to_thread(ping_stats, b, ya, args.pings)
    row("daemon b → daemon a", [f"{dd[0]:.3f}", f"{dd[1]:.3f}"])
    de = await asyncio.to_thread(ping_stats, a, str(e1.address), args.pings)
    row("daemon a → embedded", [f"{de[0]:.3f}", f"{de[1]:.3f}"])
    ed_r = [r for r in await e1.ping(ya, count=args.pings, interval=0.02, timeout=2) if r]
    ed = (statistics.median(ed_r) * 1000, statistics.quantiles(ed_r, n=10)[-1] * 1000)
    row("embedded → daemon a", [f"{ed[0]:.3f}", f"{ed[1]:.3f}"])
    ee_r = [
        r for r in await e2.ping(str(e1.address), count=args.pings, interval=0.02, timeout=2) if r
    ]
    ee = (statistics.median(ee_r) * 1000, statistics.quantiles(ee_r, n=10)[-1] * 1000)
    row("embedded → embedded (loopback)", [f"{ee[0]:.3f}", f"{ee[1]:.3f}"])
    row("ratio embedded→daemon / daemon", [f"{ed[0] / dd[0]:.2f}x", ""])

    print("\nUDP 64-byte packets, sender as fast as it can")
    row("", ["rx packets/s", "CPU s / 1k pkts"])
    kr, kc = await asyncio.to_thread(udp_rate_kernel, b, a, ya, args.packets, da)
    row("daemon b → daemon a (a's daemon)", [f"{kr:,.0f}", f"{kc:.4f}"])
    er, ec = await udp_rate_embedded(e1, a, ya, args.packets)
    row("embedded → daemon a (embedded)", [f"{er:,.0f}", f"{ec:.4f}"])
    row("ratio embedded / daemon", [f"{er / kr:.2f}x", f"{ec / kc:.1f}x" if kc else "-"])
    print(f"  → the embedded node needs {ec:.3f} CPU-seconds per 1,000 packets: "
          f"{ec * 100:.1f} % of one core at 1,000 packets/s")  # fmt: skip

    print("\nTCP bulk throughput (MB/s, median of 3) and 32-byte round trip (ms, median)")
    row("", ["MB/s", "RTT ms", "vs daemon"])
    kt = kernel_throughput
    veth = statistics.median([await asyncio.to_thread(kt, b, a, la, args.mb) for _ in range(3)])
    veth_rtt = await asyncio.to_thread(kernel_rtt, b, a, la, args.rounds)
    row("raw veth (kernel, b → a)", [f"{veth:.1f}", f"{veth_rtt:.3f}", ""])
    dd_t = statistics.median([await asyncio.to_thread(kt, b, a, ya, args.mb) for _ in range(3)])
    dd_rtt = await asyncio.to_thread(kernel_rtt, b, a, ya, args.rounds)
    row("daemon↔daemon (kernel TCP, TUN)", [f"{dd_t:.1f}", f"{dd_rtt:.3f}", "1.00x"])
    ed_t = statistics.median([
        await embedded_throughput(e1, ya, _kernel_sink(a, ya)[0], args.mb) for _ in range(3)
    ])  # fmt: skip
    echo_l, echo_p = _kernel_sink(a, ya)
    threading.Thread(target=_kernel_echo_one, args=(echo_l,), daemon=True).start()
    ed_rtt = await embedded_rtt(e1, ya, echo_p, args.rounds)
    row(
        "embedded → daemon (userspace→kernel)",
        [f"{ed_t:.1f}", f"{ed_rtt:.3f}", f"{ed_t / dd_t:.2f}x"],
    )
    de_t = statistics.median([
        await embedded_receive_throughput(e1, a, 9100 + i, args.mb) for i in range(3)
    ])  # fmt: skip
    row("daemon → embedded (kernel→userspace)", [f"{de_t:.1f}", "", f"{de_t / dd_t:.2f}x"])
    await embedded_echo_server(e1, 9200)
    ee_t = statistics.median(
        [await embedded_pair_throughput(e1, e2, args.mb, 9300 + i) for i in range(3)]
    )
    ee_rtt = await embedded_rtt(e2, str(e1.address), 9200, args.rounds)
    row(
        "embedded ↔ embedded (loopback link)",
        [f"{ee_t:.1f}", f"{ee_rtt:.3f}", f"{ee_t / dd_t:.2f}x"],
    )
    print(f"\nfirst target: embedded↔daemon ≥ 25 % of daemon↔daemon throughput: "
          f"{min(ed_t, de_t) / dd_t * 100:.0f} % (worse direction)")  # fmt: skip
    rss = await asyncio.to_thread(idle_rss_mb)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"idle embedded `mesh up` RSS: {rss:.1f} MB (target < 80 MB); bench peak {peak:.0f} MB")


async def carriers_report(
    args: argparse.Namespace, a: Host, da: Daemon, root: RootLink, tmp: Path
) -> None:
    ya = str(da.address)
    print(f"\nCarriers: embedded → daemon a, TCP bulk ({args.mb} MB, median of 3), 32-byte "
          f"round trip (median of {args.rounds}), event-loop CPU per MB sent")  # fmt: skip
    row("", ["MB/s", "RTT ms", "loop CPU s/MB", "MB/s vs tcp"])
    base = 0.0
    for scheme, port in CARRIER_PORTS.items():
        node = await Node.open(
            NodeConfig(data_dir=tmp / f"carrier-{scheme}", backend="embedded",
                       peers=(f"{scheme}://[{root.host_addr}]:{port}",)),
            Identity.generate(),
        )  # fmt: skip
        try:
            await wait_path(node, ya)
            rates, cpus = [], []
            for _ in range(3):
                cpu = time.thread_time()  # this thread runs the whole embedded node
                rates.append(await embedded_throughput(node, ya, _kernel_sink(a, ya)[0], args.mb))
                cpus.append((time.thread_time() - cpu) / args.mb)
            echo_l, echo_p = _kernel_sink(a, ya)
            threading.Thread(target=_kernel_echo_one, args=(echo_l,), daemon=True).start()
            rtt = await embedded_rtt(node, ya, echo_p, args.rounds)
        finally:
            await node.close()
        rate = statistics.median(rates)
        base = base or rate
        cpu_mb = statistics.median(cpus)
        row(f"{scheme}:// embedded → daemon",
            [f"{rate:.1f}", f"{rtt:.3f}", f"{cpu_mb:.3f}", f"{rate / base:.2f}x"])  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=16)
    parser.add_argument("--pings", type=int, default=40)
    parser.add_argument("--packets", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--carriers-only", action="store_true", help="only the carriers table")
    if os.geteuid() != 0:
        sys.exit("bench_embedded needs root (network namespaces)")
    asyncio.run(main(parser.parse_args()))
