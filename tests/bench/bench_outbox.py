"""Durable outbox figures: put/s (alone and concurrent, each committed with FULL sync),
deliveries/s through the scheduler, and the retry latency after a ``peer.up`` event.

Run::

    .venv/bin/python tests/bench/bench_outbox.py [--entries 2000] [--dir /tmp]

The database lives in ``--dir`` (default: a temporary directory on /tmp); the figures
depend on that file system's fsync.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from core import AppDatabase, Delivered, DeliveryResult, Outbox, OutboxEntry, Retry, RetryPolicy
from core.backend import NodeEvent
from core.events import EventBus

MIGRATIONS = {1: ("CREATE TABLE app (x INTEGER)",)}


class _Node:
    def __init__(self) -> None:
        self.events = EventBus()


async def _open(root: Path, name: str) -> tuple[AppDatabase, Outbox]:
    db = await AppDatabase.open(root / f"{name}.db", MIGRATIONS, what=name)
    policy = RetryPolicy(initial=600, max_delay=3600)
    return db, await Outbox.open(db, name="bench", policy=policy, max_entries=1_000_000)


async def _puts(root: Path, count: int) -> tuple[float, float]:
    db, outbox = await _open(root, "puts")
    dests = [bytes([i % 50 + 1]) * 32 for i in range(count)]
    try:
        n = min(count, 300)
        start = time.perf_counter()
        for i in range(n):
            await outbox.put(dests[i], b"x" * 200, ref=f"s{i}")
        alone = n / (time.perf_counter() - start)
        start = time.perf_counter()
        await asyncio.gather(*(outbox.put(dests[i], b"x" * 200, ref=f"c{i}") for i in range(count)))
        together = count / (time.perf_counter() - start)
    finally:
        await db.close()
    return alone, together


async def _deliveries(root: Path, count: int) -> float:
    db, outbox = await _open(root, "deliver")
    done = asyncio.Event()
    delivered = 0

    async def deliver(dest: bytes, entries: list[OutboxEntry]) -> Sequence[DeliveryResult]:
        nonlocal delivered
        delivered += len(entries)
        if delivered >= count:
            done.set()
        return [Delivered() for _ in entries]

    async def expired(entry: OutboxEntry) -> None:
        raise AssertionError(entry.ref)

    try:
        await asyncio.gather(
            *(outbox.put(bytes([i % 50 + 1]) * 32, b"x", ref=f"d{i}") for i in range(count))
        )
        start = time.perf_counter()
        outbox.start(None, deliver=deliver, expired=expired)
        await done.wait()
        while await outbox.count():  # noqa: ASYNC110 - the last Delivered is committed
            await asyncio.sleep(0.001)
        return count / (time.perf_counter() - start)
    finally:
        await outbox.close()
        await db.close()


async def _wake_latency(root: Path, rounds: int) -> list[float]:
    db, outbox = await _open(root, "wake")
    node = _Node()
    attempt = asyncio.Event()

    async def deliver(dest: bytes, entries: list[OutboxEntry]) -> Sequence[DeliveryResult]:
        attempt.set()
        return [Retry("away") for _ in entries]

    async def expired(entry: OutboxEntry) -> None:
        raise AssertionError(entry.ref)

    dest = bytes([9]) * 32
    latencies: list[float] = []
    try:
        await outbox.put(dest, b"x", ref="w")
        outbox.start(node, deliver=deliver, expired=expired)
        await attempt.wait()
        for _ in range(rounds):
            await asyncio.sleep(0.01)  # the Retry is recorded: a 10-minute backoff
            attempt.clear()
            start = time.perf_counter()
            node.events.publish(NodeEvent("peer.up", {"key": dest.hex()}))
            await attempt.wait()
            latencies.append(time.perf_counter() - start)
    finally:
        await outbox.close()
        await db.close()
    return latencies


async def _main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        alone, together = await _puts(root, args.entries)
        rate = await _deliveries(root, args.entries)
        wake = await _wake_latency(root, 50)
    print(f"outbox put, one at a time:        {alone:8.0f} put/s (each fsync'd)")
    print(f"outbox put, {args.entries} concurrent: {together:8.0f} put/s (group commit)")
    print(f"deliveries through the scheduler:  {rate:8.0f} entries/s (50 destinations)")
    print(
        f"retry after peer.up: median {statistics.median(wake) * 1000:.2f} ms, "
        f"max {max(wake) * 1000:.2f} ms over {len(wake)} events"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=2000)
    parser.add_argument("--dir", default=None)
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
