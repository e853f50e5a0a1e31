"""The in-memory mesh (core.testing.mem_mesh) against loopback TCP links, side by side:
how long until three nodes in a line (A - B - C) all reach each other, the TCP echo
round trip A -> C through B, and a bulk transfer A -> C.

Run::

    .venv/bin/python tests/bench/bench_mem_mesh.py [--rounds 3] [--mbytes 8]

"loopback" peers real embedded nodes over 127.0.0.1 TCP links and waits the way tests
did before the in-memory mesh (one ping at a time until each route answers).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from core import Identity, Node, NodeConfig
from core.testing import mem_mesh

PORT = 7100


@asynccontextmanager
async def loopback_line(base: Path) -> AsyncIterator[list[Node]]:
    nodes: list[Node] = []
    try:
        peers: tuple[str, ...] = ()
        for i in range(3):
            config = NodeConfig(
                data_dir=base / f"n{i}", backend="embedded",
                listen=("tcp://127.0.0.1:0",), peers=peers,
            )  # fmt: skip
            node = await Node.open(config, Identity.generate())
            nodes.append(node)
            peers = (str((await node.status())["backend_status"]["listening"][0]),)
        for src in nodes:
            for dst in nodes:
                while (
                    src is not dst and (await src.ping(dst.address, count=1, timeout=1))[0] is None
                ):
                    pass
        yield nodes
    finally:
        for node in reversed(nodes):
            await node.close()


async def measure(kind: str, base: Path, mbytes: int) -> tuple[float, float, float]:
    started = time.perf_counter()
    mesh = mem_mesh(3, base, topology="chain") if kind == "memory" else loopback_line(base)
    async with mesh as nodes:
        ready = time.perf_counter() - started
        a, c = nodes[0], nodes[2]

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        server = await c.start_server(echo, PORT)
        reader, writer = await a.open_connection(c.address, PORT)
        rtts = []
        for _ in range(50):
            t = time.perf_counter()
            writer.write(b"x")
            await reader.readexactly(1)
            rtts.append(time.perf_counter() - t)
        chunk = b"y" * 65536
        total = mbytes * 1024 * 1024
        t = time.perf_counter()

        async def send() -> None:
            for _ in range(total // len(chunk)):
                writer.write(chunk)
                await writer.drain()

        async def receive() -> None:
            got = 0
            while got < total:
                got += len(await reader.read(1 << 20))

        await asyncio.gather(send(), receive())
        mbps = total * 8 / (time.perf_counter() - t) / 1e6
        writer.close()
        server.close()
        return ready, statistics.median(rtts), mbps


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mbytes", type=int, default=8)
    args = parser.parse_args(argv)
    print(f"{'carrier':<10} {'ready (s)':>10} {'echo rtt (ms)':>14} {'bulk A->C (Mbit/s)':>19}")
    for kind in ("memory", "loopback"):
        rows = []
        for r in range(args.rounds):
            with tempfile.TemporaryDirectory(prefix="bench-mem-") as tmp:
                rows.append(await measure(kind, Path(tmp) / str(r), args.mbytes))
        ready, rtt, mbps = (statistics.median(col) for col in zip(*rows, strict=True))
        print(f"{kind:<10} {ready:>10.2f} {rtt * 1000:>14.2f} {mbps:>19.1f}")


if __name__ == "__main__":
    asyncio.run(main())
