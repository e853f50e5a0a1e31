"""Figures for the link+routing layer (not a test).

``.venv/bin/python -m tests.embedded.bench_net_forwarding``: packets/s and MB/s of
PacketNetwork.send between two embedded nodes on loopback TCP, direct and through
a forwarding middle node, in one event loop (so all nodes share one core).
"""

from __future__ import annotations

import asyncio
import os
import time

from core.embedded import PacketNetwork
from core.embedded.network import subnet_bloom_transform


async def _bench(hops: int, count: int, size: int) -> tuple[float, int]:
    nets = [
        PacketNetwork(os.urandom(32), bloom_transform=subnet_bloom_transform)
        for _ in range(hops + 1)
    ]
    got = 0
    last = 0.0

    def on_packet(src: bytes, data: bytes) -> None:
        nonlocal got, last
        got += 1
        last = time.perf_counter()

    nets[-1].set_handler(on_packet)
    for n in nets:
        await n.start()
    try:
        uris = [await n.listen("tcp://127.0.0.1:0") for n in nets]
        for i in range(hops):
            await nets[i].add_peer(uris[i + 1])
        dst = nets[-1].public_key
        while not nets[0].router.pathfinder.paths.get(dst):
            nets[0].send(dst, b"warmup")
            await asyncio.sleep(0.3)
        got = 0
        payload = os.urandom(size)
        start = time.perf_counter()
        for i in range(count):
            nets[0].send(dst, payload)
            if i % 64 == 63:
                await asyncio.sleep(0)  # let the links drain (ironwood's queues drop if starved)
        # until everything arrived or 1 s of silence (drops are ironwood's 25 ms rule)
        for _ in range(1200):
            if got >= count or time.perf_counter() - max(last, start) > 1.0:
                break
            await asyncio.sleep(0.05)
        return max(last - start, 1e-9), got
    finally:
        for n in nets:
            await n.close()


async def main() -> None:
    for hops in (1, 2):
        for size in (64, 1024, 8192):
            count = 20000 if size < 8192 else 5000
            elapsed, got = await _bench(hops, count, size)
            print(
                f"hops={hops} size={size:5d}B sent={count} delivered={got} "
                f"{got / elapsed:8.0f} pkt/s {got * size / elapsed / 1e6:7.2f} MB/s"
            )


if __name__ == "__main__":
    asyncio.run(main())
