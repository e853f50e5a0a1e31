"""Closing always returns: long-lived tasks cancelled at every point of their loop.

A cancellation that lands as the awaited thing completes was swallowed by Python 3.11's
``asyncio.wait_for``: the task ran on and its owner's ``close()`` waited forever. These
tests cancel at each loop turn around such a moment, and at random moments under
traffic, and fail if a close does not return (a bounded wait, far above any real close:
a hang detector, not a timing assertion).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from core import AppDatabase, Delivered, DeliveryResult, Outbox, OutboxEntry, Retry, RetryPolicy
from core.embedded import NetworkConfig, PacketNetwork
from core.outbox import Scheduler
from core.tasks import cancel_and_wait, within

HANG = 30.0  # a close that has not returned by then never will

MIGRATIONS = {1: ("CREATE TABLE app (x INTEGER)",)}


async def _closes(what: str, aw: object) -> None:
    try:
        async with asyncio.timeout(HANG):
            await aw  # type: ignore[misc]
    except TimeoutError:
        pytest.fail(f"{what} did not return")


async def _until(what: str, check: object) -> None:
    for _ in range(100_000):  # loop turns, not seconds
        if check():  # type: ignore[operator]
            return
        await asyncio.sleep(0)
    pytest.fail(f"never: {what}")


async def _nothing(now: float, free: int, busy: set[object]) -> list[int]:
    return []


async def _never(busy: set[object]) -> float | None:
    return None


async def _run(batch: int) -> None:
    pass


@pytest.mark.parametrize("turns", range(8))
async def test_a_scheduler_woken_as_it_is_cancelled_stops(turns: int) -> None:
    # wake() and cancel() a few loop turns apart: one of these lands the cancellation
    # exactly as the scheduler's wait completes (the moment wait_for swallowed it).
    sched: Scheduler[int] = Scheduler(
        name="t", find=_nothing, keys=lambda b: (b,), next_due=_never, run=_run, concurrency=1
    )
    task = asyncio.get_running_loop().create_task(sched.run())
    await _until("the scheduler waits", lambda: sched._wake._waiters)  # type: ignore[attr-defined]
    sched.wake()
    for _ in range(turns):
        await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=HANG)
    assert task in done, "the cancelled scheduler ran on"
    assert task.cancelled()


async def test_within_never_swallows_the_callers_cancellation() -> None:
    for turns in range(8):
        event = asyncio.Event()
        task = asyncio.get_running_loop().create_task(within(event.wait(), 60))
        await _until("waiting", lambda event=event: event._waiters)  # type: ignore[attr-defined]
        event.set()
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.wait({task}, timeout=HANG)
        # either the wait completed before the cancel landed, or the cancel propagated
        assert task.done() and (task.cancelled() or task.result() is True)


async def test_cancel_and_wait_recancels_a_task_that_swallows_once() -> None:
    started = asyncio.Event()

    async def stubborn() -> None:
        started.set()
        with contextlib.suppress(asyncio.CancelledError):  # swallowed once, as 3.11's
            await asyncio.sleep(3600)  # wait_for might
        await asyncio.sleep(3600)

    task = asyncio.get_running_loop().create_task(stubborn())
    await started.wait()
    assert await cancel_and_wait(task, what="stubborn", grace=0.01)
    assert task.cancelled()


async def test_cancel_and_wait_gives_up_on_a_task_that_never_stops() -> None:
    released = asyncio.Event()

    async def immortal() -> None:
        while not released.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await released.wait()

    task = asyncio.get_running_loop().create_task(immortal())
    await asyncio.sleep(0)
    assert not await cancel_and_wait(task, what="immortal", grace=0.01, limit=0.05)
    assert not task.done()
    released.set()  # the test's own clean-up
    await task


@pytest.mark.slow
async def test_outbox_and_database_close_at_random_moments_lose_nothing(tmp_path: Path) -> None:
    """Puts, deliveries and closes at random moments, 25 rounds on one file: every close
    returns and every acknowledged put is delivered or still queued afterwards."""
    rng = random.Random(26)
    policy = RetryPolicy(initial=0.01, max_delay=0.02, jitter=0.0, expiry=3600)
    path = tmp_path / "t.db"
    acked: set[str] = set()
    delivered: set[str] = set()
    dests = [bytes([i + 1]) * 32 for i in range(3)]

    async def deliver(dest: bytes, entries: list[OutboxEntry]) -> Sequence[DeliveryResult]:
        await asyncio.sleep(rng.random() * 0.01)
        results: list[DeliveryResult] = []
        for entry in entries:
            if (results and isinstance(results[-1], Retry)) or rng.random() < 0.2:
                results.append(Retry("busy"))
            else:
                delivered.add(entry.ref)
                results.append(Delivered())
        return results

    async def expired(entry: OutboxEntry) -> None:
        raise AssertionError(f"unexpected expiry of {entry.ref}")

    async def putter(outbox: Outbox, round_: int) -> None:
        for i in range(1000):
            ref = f"{round_}-{i}"
            await outbox.put(rng.choice(dests), b"x", ref=ref)
            acked.add(ref)
            await asyncio.sleep(rng.random() * 0.005)

    async def writer(db: AppDatabase) -> None:
        while True:
            await db.transaction(lambda c: c.execute("INSERT INTO app (x) VALUES (1)"))
            await asyncio.sleep(0)

    for round_ in range(25):
        db = await AppDatabase.open(path, MIGRATIONS, what="test.db")
        outbox = await Outbox.open(db, name="t", policy=policy, max_entries=100_000)
        outbox.start(None, deliver=deliver, expired=expired)
        loop = asyncio.get_running_loop()
        load = [loop.create_task(putter(outbox, round_)), loop.create_task(writer(db))]
        for _ in range(rng.randrange(1, 200)):  # a random point in the traffic
            await asyncio.sleep(0)
        await asyncio.sleep(rng.random() * 0.05)
        for task in load:
            task.cancel()
        await _closes("outbox.close", outbox.close())
        await _closes("db.close", db.close())
        await asyncio.wait(load, timeout=HANG)
        assert all(task.done() for task in load)
    other = sqlite3.connect(path)
    queued = {ref for (ref,) in other.execute("SELECT ref FROM outbox_t")}
    other.close()
    assert acked, "no put was acknowledged"
    assert acked <= delivered | queued


@pytest.mark.slow
async def test_embedded_links_close_at_random_moments() -> None:
    """Two embedded networks on loopback, a static peer and traffic; remove_peer and
    close land at random moments (mid-dial, mid-handshake, mid-traffic), 20 rounds: each
    returns and leaves no task of theirs behind."""
    rng = random.Random(2626)
    for _ in range(20):
        config = NetworkConfig(backoff_min=0.01)
        server, client = PacketNetwork(os.urandom(32)), PacketNetwork(os.urandom(32), config=config)
        await server.start()
        await client.start()
        uri = await server.listen(rng.choice(["tcp", "tls"]) + "://127.0.0.1:0")
        await client.add_peer(uri)

        async def chatter(client: PacketNetwork = client, server: PacketNetwork = server) -> None:
            while True:
                client.send(server.public_key, b"x" * 100)
                await asyncio.sleep(0)

        load = asyncio.get_running_loop().create_task(chatter())
        for _ in range(rng.randrange(0, 400)):
            await asyncio.sleep(0)
        if rng.random() < 0.5:
            await _closes("remove_peer", client.remove_peer(uri))
        load.cancel()
        await _closes("client.close", client.close())
        await _closes("server.close", server.close())
        await asyncio.wait({load}, timeout=HANG)
        assert load.done()
        await asyncio.sleep(0)  # tasks that have just ended leave the set
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not left, f"tasks left running: {left}"
