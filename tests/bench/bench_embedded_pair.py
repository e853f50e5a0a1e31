"""Two embedded nodes without the lab: per-packet cost in seconds, no root, no daemon.

    .venv/bin/python -m tests.bench.bench_embedded_pair [--packets 20000] [--runs 3] [--mb 8]

Node A listens on ``tcp://127.0.0.1:0``; node B peers with it. Both are real
:class:`core.node.Node` objects on the embedded backend (sessions, routing, userspace
UDP/TCP: the whole per-packet path), side by side in two layouts:

- one process:    A and B on one event loop (CPU is both sides together);
- two processes:  A in a child process (this module with ``--child``), B here; CPU is
                  reported per side and summed.

Figures (medians of ``--runs``):

- UDP 64-byte datagrams B → A, sent as fast as the sender can (200 per loop turn, as
  ``bench_embedded``): packets/s at the receiver, loss, CPU-seconds per 1,000 packets;
- UDP 64-byte echo round trip B → A → B (ms, median of ``--rounds``);
- TCP bulk B → A (MB/s over ``--mb`` MiB).

The machine may be shared: the load average is printed first; compare rows of one run
(the one-process and two-process rows, before and after a change), not absolutes.
The lab benchmark against real daemons is ``tests/bench/bench_embedded.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import NodeConfig
from core.identity import Identity
from core.node import Node

PAYLOAD = 64
BATCH = 200  # datagrams per event-loop turn, as bench_embedded
CHUNK = 256 * 1024
SETTLE = 0.5  # the receiver count is final after this long without change
WAIT_LIMIT = 60.0


# -- the receiving side (node A): the same code in this process or in the child ----------
class _Counter(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.count = 0
        self.last = 0.0

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.count += 1
        self.last = time.monotonic()


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.DatagramTransport)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.transport.sendto(data, addr)


@dataclass
class Receiver:
    node: Node
    counter: _Counter
    ports: dict[str, int]

    @classmethod
    async def start(cls, node: Node) -> Receiver:
        counter = _Counter()
        count_t, _ = await node.create_datagram_endpoint(lambda: counter)
        echo_t, _ = await node.create_datagram_endpoint(_Echo)

        async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            total = 0
            while data := await reader.read(CHUNK):
                total += len(data)
            writer.write(total.to_bytes(8, "big"))
            await writer.drain()
            writer.close()

        server = await node.start_server(sink, 0)
        ports = {
            "count": count_t.get_extra_info("sockname")[1],
            "echo": echo_t.get_extra_info("sockname")[1],
            "tcp": server.port,
        }
        return cls(node, counter, ports)

    def stats(self) -> dict[str, float]:
        return {"count": self.counter.count, "last": self.counter.last, "cpu": time.process_time()}


async def child(data_dir: Path) -> None:
    """``--child``: node A in its own process, driven over stdin/stdout (JSON lines)."""
    config = NodeConfig(data_dir=data_dir, backend="embedded", listen=("tcp://127.0.0.1:0",))
    async with await Node.open(config, Identity.generate()) as node:
        receiver = await Receiver.start(node)
        uri = (await node.status())["backend_status"]["listening"][0]
        hello = {"uri": uri, "address": str(node.address), "ports": receiver.ports}
        print(json.dumps(hello), flush=True)
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            if line.strip() == "stats":
                print(json.dumps(receiver.stats()), flush=True)


# -- the sending side (node B) -------------------------------------------------------------
StatsFn = Callable[[], Awaitable[dict[str, float]]]


@dataclass
class UdpRun:
    rate: float  # packets/s at the receiver
    loss: float  # fraction
    cpu_tx: float  # CPU-seconds per 1,000 packets, sender side (both sides in one process)
    cpu_rx: float  # receiver side (0 in one process)


async def settle(stats: StatsFn, floor: int) -> dict[str, float]:
    """The receiver's stats once its count stopped moving for SETTLE seconds."""
    deadline = time.monotonic() + WAIT_LIMIT
    last = await stats()
    still_since = time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        now = await stats()
        if now["count"] != last["count"]:
            still_since = time.monotonic()
        elif now["count"] >= floor or time.monotonic() - still_since >= SETTLE:
            return now
        last = now
    return last


async def udp_run(b: Node, a_addr: str, port: int, packets: int, stats: StatsFn) -> UdpRun:
    transport, _ = await b.create_datagram_endpoint(asyncio.DatagramProtocol)
    before = await stats()
    payload = b"p" * PAYLOAD
    cpu0, t0 = time.process_time(), time.monotonic()
    for i in range(packets):
        transport.sendto(payload, (a_addr, port))
        if i % BATCH == BATCH - 1:
            await asyncio.sleep(0)
    after = await settle(stats, before["count"] + packets)
    cpu = time.process_time() - cpu0
    transport.close()
    got = after["count"] - before["count"]
    elapsed = max(after["last"] - t0, 1e-9)
    rx_cpu = 0.0 if "local" in after else after["cpu"] - before["cpu"]
    per_k = 1000 / max(got, 1)
    return UdpRun(got / elapsed, 1 - got / packets, cpu * per_k, rx_cpu * per_k)


async def echo_rtt(b: Node, a_addr: str, port: int, rounds: int) -> float:
    loop = asyncio.get_running_loop()
    replies: asyncio.Queue[bytes] = asyncio.Queue()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
            replies.put_nowait(data)

    transport, _ = await b.create_datagram_endpoint(Client, remote=(a_addr, port))
    times = []
    try:
        for i in range(rounds):
            msg = i.to_bytes(4, "big") + bytes(PAYLOAD - 4)
            t0 = loop.time()
            transport.sendto(msg)
            async with asyncio.timeout(5):
                while await replies.get() != msg:
                    pass
            times.append(loop.time() - t0)
    finally:
        transport.close()
    return statistics.median(times) * 1000


async def tcp_rate(b: Node, a_addr: str, port: int, mb: int) -> float:
    reader, writer = await b.open_connection(a_addr, port)
    block = os.urandom(CHUNK)
    total = mb * 1024 * 1024 // CHUNK * CHUNK
    t0 = time.perf_counter()
    for _ in range(total // CHUNK):
        writer.write(block)
        await writer.drain()
    writer.write_eof()
    async with asyncio.timeout(WAIT_LIMIT):
        got = int.from_bytes(await reader.readexactly(8), "big")
    elapsed = time.perf_counter() - t0
    writer.close()
    if got != total:
        raise RuntimeError(f"TCP sink got {got} of {total} bytes")
    return total / elapsed / 1e6


async def wait_path(node: Node, target: str) -> None:
    for _ in range(60):
        if (await node.ping(target, count=1, timeout=1))[0] is not None:
            return
    raise RuntimeError(f"no path to {target}")


@dataclass
class Figures:
    udp: list[UdpRun]
    rtt: list[float]
    tcp: list[float]


async def measure(
    b: Node, a_addr: str, ports: dict[str, int], stats: StatsFn, args: Any
) -> Figures:
    await wait_path(b, a_addr)
    figures = Figures([], [], [])
    for _ in range(args.runs):
        figures.udp.append(await udp_run(b, a_addr, ports["count"], args.packets, stats))
        figures.rtt.append(await echo_rtt(b, a_addr, ports["echo"], args.rounds))
        figures.tcp.append(await tcp_rate(b, a_addr, ports["tcp"], args.mb))
    return figures


async def one_process(base: Path, args: Any) -> Figures:
    a_conf = NodeConfig(data_dir=base / "a", backend="embedded", listen=("tcp://127.0.0.1:0",))
    async with await Node.open(a_conf, Identity.generate()) as a:
        receiver = await Receiver.start(a)
        uri = (await a.status())["backend_status"]["listening"][0]
        b_conf = NodeConfig(data_dir=base / "b", backend="embedded", peers=(uri,))
        async with await Node.open(b_conf, Identity.generate()) as b:

            async def stats() -> dict[str, float]:
                return {**receiver.stats(), "local": 1.0}

            return await measure(b, str(a.address), receiver.ports, stats, args)


async def two_processes(base: Path, args: Any) -> Figures:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.bench.bench_embedded_pair", "--child", str(base / "a"),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout
    try:
        async with asyncio.timeout(WAIT_LIMIT):
            hello = json.loads(await stdout.readline())
        lock = asyncio.Lock()

        async def stats() -> dict[str, float]:
            async with lock, asyncio.timeout(10):
                stdin.write(b"stats\n")
                await stdin.drain()
                result: dict[str, float] = json.loads(await stdout.readline())
                return result

        b_conf = NodeConfig(data_dir=base / "b", backend="embedded", peers=(hello["uri"],))
        async with await Node.open(b_conf, Identity.generate()) as b:
            return await measure(b, hello["address"], hello["ports"], stats, args)
    finally:
        stdin.close()
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


def row(name: str, values: list[str]) -> None:
    print(f"{name:<28}" + "".join(f"{v:>14}" for v in values))


def report(name: str, f: Figures) -> None:
    med = statistics.median
    cpu_tx = med(u.cpu_tx for u in f.udp)
    cpu_rx = med(u.cpu_rx for u in f.udp)
    row(
        name,
        [
            f"{med(u.rate for u in f.udp):,.0f}",
            f"{med(u.loss for u in f.udp) * 100:.1f} %",
            f"{cpu_tx:.4f}",
            f"{cpu_rx:.4f}" if cpu_rx else "-",
            f"{cpu_tx + cpu_rx:.4f}",
            f"{med(f.rtt):.3f}",
            f"{med(f.tcp):.1f}",
        ],
    )


async def profile(args: argparse.Namespace) -> None:
    """``--profile``: one UDP run in one process under cProfile; the top functions."""
    import cProfile
    import pstats

    args.runs, args.rounds, args.mb = 1, 1, 1
    profiler = cProfile.Profile()
    with tempfile.TemporaryDirectory() as tmp:
        profiler.enable()
        await one_process(Path(tmp), args)
        profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)


async def main(args: argparse.Namespace) -> None:
    load = os.getloadavg()
    print(
        f"two embedded nodes over a loopback TCP link; {args.packets} UDP datagrams of "
        f"{PAYLOAD} bytes, {args.rounds} echoes, {args.mb} MiB TCP; median of {args.runs} runs"
    )
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} CPUs\n")
    heads = ["UDP pkts/s", "UDP loss", "CPU/1k tx", "CPU/1k rx", "CPU/1k both", "RTT ms"]
    row("", [*heads, "TCP MB/s"])
    with tempfile.TemporaryDirectory() as tmp:
        one = await one_process(Path(tmp, "one"), args)
        report("one process (A and B)", one)
        two = await two_processes(Path(tmp, "two"), args)
        report("two processes (B here, A)", two)
    print("\nCPU/1k: CPU-seconds per 1,000 datagrams received (one process: both nodes).")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packets", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--mb", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", type=int, metavar="N", help="profile one process; top N")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.child is not None:
        asyncio.run(child(parsed.child))
    elif parsed.profile:
        asyncio.run(profile(parsed))
    else:
        asyncio.run(main(parsed))
