"""Real yggdrasil daemons in two namespaces: the daemon backend publishes ``session.up``
naming a node that opened a session with ours, and an outbox in backoff for that node
retries it within a second of the event."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from core import AppDatabase, Delivered, DeliveryResult, Outbox, OutboxEntry, Retry, RetryPolicy
from tests.lab.fixtures import open_node, two_host_lab
from tests.lab.lab import Lab

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from two_host_lab("kdob")


@pytest.mark.timeout(120)
async def test_a_daemon_session_from_the_destination_retries_it_within_a_second(
    lab: Lab, tmp_path: Path
) -> None:
    a, b = lab.hosts["a"], lab.hosts["b"]
    assert a.daemon and b.daemon
    b_hex, a_address = b.daemon.key, a.daemon.address
    b_key = bytes.fromhex(b_hex)
    retried = asyncio.Event()
    attempts: list[float] = []
    ups: list[float] = []

    async def deliver(dest: bytes, entries: list[OutboxEntry]) -> Sequence[DeliveryResult]:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            return [Retry("cannot connect") for _ in entries]
        retried.set()
        return [Delivered() for _ in entries]

    async def expired(entry: OutboxEntry) -> None:
        raise AssertionError(entry.ref)

    db = await AppDatabase.open(tmp_path / "a.db", {1: ("CREATE TABLE x (y)",)}, what="a.db")
    outbox = await Outbox.open(
        db, name="lab", policy=RetryPolicy(initial=600, max_delay=3600), max_entries=10
    )
    async with await open_node(a) as na, na.events.subscribe() as events:

        async def watch() -> None:
            async for event in events:
                if event.kind == "session.up" and event.data.get("key") == b_hex:
                    ups.append(time.monotonic())

        watcher = asyncio.create_task(watch())
        try:
            await asyncio.sleep(1.0)  # a few polls: what was open already is reported
            assert not ups, "A and B had a session before the test made traffic"
            await outbox.put(b_key, b"hello", ref="m1")
            outbox.start(na, deliver=deliver, expired=expired)
            for _ in range(200):
                if len(attempts) == 1 and (await outbox.pending())[0].attempts == 1:
                    break
                await asyncio.sleep(0.02)
            assert len(attempts) == 1  # now in a 10-minute backoff
            # B's daemon sends to A's: a session opens, the next poll reports it.
            await asyncio.to_thread(lab.wait_reachable, b, a_address)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(retried.wait(), 15)
            assert ups, "no session.up for B's key on A within 15 s"
            assert len(attempts) == 2 and attempts[1] - ups[0] < 1.0
            print(f"daemon backend: retry {(attempts[1] - ups[0]) * 1000:.1f} ms after session.up")
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await outbox.close()
            await db.close()
