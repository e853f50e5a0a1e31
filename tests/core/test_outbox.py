"""The durable outbox: durable puts, FIFO per destination, backoff with jitter, expiry
called back once, a bounded size, and an immediate retry when the destination comes up."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path

import pytest

from core import (
    AppDatabase,
    Delivered,
    DeliveryResult,
    Failed,
    Outbox,
    OutboxEntry,
    OutboxFull,
    Retry,
    RetryPolicy,
    Scheduler,
    UsageError,
)
from core.backend import NodeEvent
from core.events import EventBus

A, B, C = bytes([1]) * 32, bytes([2]) * 32, bytes([3]) * 32
FAST = RetryPolicy(initial=0.05, max_delay=0.1, jitter=0.0, expiry=3600)
MIGRATIONS = {1: ("CREATE TABLE app (x INTEGER)",)}


class FakeNode:
    def __init__(self) -> None:
        self.events = EventBus()


async def _open(path: Path, policy: RetryPolicy = FAST, **kw: object) -> tuple[AppDatabase, Outbox]:
    db = await AppDatabase.open(path, MIGRATIONS, what="test.db")
    outbox = await Outbox.open(db, name="t", policy=policy, max_entries=100, **kw)  # type: ignore[arg-type]
    return db, outbox


async def eventually(what: str, check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def _no_expiry(entry: OutboxEntry) -> None:
    raise AssertionError(f"unexpected expiry of {entry.ref}")


async def test_put_is_committed_on_return_and_survives_reopen(tmp_path: Path) -> None:
    db, outbox = await _open(tmp_path / "t.db")
    entries = await asyncio.gather(*(outbox.put(A, b"p%d" % i, ref=f"r{i}") for i in range(30)))
    other = sqlite3.connect(tmp_path / "t.db")  # another connection sees only commits
    assert other.execute("SELECT count(*) FROM outbox_t").fetchone()[0] == 30
    other.close()
    assert [e.id for e in entries] == sorted(e.id for e in entries)
    again = await outbox.put(A, b"other", ref="r3")  # a replayed put adds nothing
    assert again == entries[3] and await outbox.count() == 30
    await db.close()
    db, outbox = await _open(tmp_path / "t.db")
    try:
        assert [e.ref for e in await outbox.pending(A)] == [f"r{i}" for i in range(30)]
        assert await outbox.remove("r0") and not await outbox.remove("r0")
        with pytest.raises(UsageError, match="32-byte"):
            await outbox.put(b"short", b"x", ref="bad")
    finally:
        await db.close()


async def test_full_outbox_refuses_with_a_clear_error(tmp_path: Path) -> None:
    db = await AppDatabase.open(tmp_path / "t.db", MIGRATIONS, what="test.db")
    outbox = await Outbox.open(db, name="t", policy=FAST, max_entries=5)
    try:
        results = await asyncio.gather(
            *(outbox.put(A, b"x", ref=f"r{i}") for i in range(8)), return_exceptions=True
        )
        full = [r for r in results if isinstance(r, OutboxFull)]
        assert len(full) == 3 and await outbox.count() == 5
        assert "holds 5 entries (its limit)" in str(full[0])
    finally:
        await db.close()


async def test_each_destination_gets_its_entries_in_put_order(tmp_path: Path) -> None:
    db, outbox = await _open(tmp_path / "t.db", max_batch=3, concurrency=2)
    got: dict[bytes, list[str]] = {A: [], B: [], C: []}
    flaky = random.Random(1)

    async def deliver(dest: bytes, entries: list[OutboxEntry]) -> Sequence[DeliveryResult]:
        await asyncio.sleep(0.001)
        results: list[DeliveryResult] = []
        for entry in entries:
            # A refused entry holds back the ones after it (a prefix is delivered).
            if (results and isinstance(results[-1], Retry)) or flaky.random() < 0.3:
                results.append(Retry("busy"))
            else:
                got[dest].append(entry.ref)
                results.append(Delivered())
        return results

    try:
        for i in range(20):
            for dest in (A, B, C):
                await outbox.put(dest, b"x", ref=f"{dest[0]}-{i}")
        outbox.start(None, deliver=deliver, expired=_no_expiry)
        await eventually("all delivered", lambda: all(len(v) == 20 for v in got.values()))
        for dest, refs in got.items():
            assert refs == [f"{dest[0]}-{i}" for i in range(20)]
        # The last removal commits just after its deliver() returned.
        for _ in range(500):
            if await outbox.count() == 0:
                break
            await asyncio.sleep(0.01)
        assert await outbox.count() == 0
    finally:
        await outbox.close()
        await db.close()


async def test_failed_entries_are_removed_without_retry_or_expiry(tmp_path: Path) -> None:
    db, outbox = await _open(tmp_path / "t.db")
    calls: list[str] = []

    async def deliver(dest: bytes, entries: list[OutboxEntry]) -> Sequence[DeliveryResult]:
        calls.extend(e.ref for e in entries)
        return [Failed("550 no such user") for _ in entries]

    try:
        await outbox.put(A, b"x", ref="one")
        outbox.start(None, deliver=deliver, expired=_no_expiry)
        await eventually("the attempt", lambda: calls == ["one"])
        await asyncio.sleep(0.3)  # longer than any backoff of FAST
        assert calls == ["one"] and await outbox.count() == 0
    finally:
        await outbox.close()
        await db.close()


async def test_expiry_calls_back_exactly_once(tmp_path: Path) -> None:
    policy = RetryPolicy(initial=0.02, max_delay=0.05, jitter=0.5, expiry=0.3)
    db, outbox = await _open(tmp_path / "t.db", policy)
    attempts: list[float] = []
    expired: list[OutboxEntry] = []

    async def deliver(dest: bytes, entries: list[OutboxEntry]) -> Sequence[DeliveryResult]:
        attempts.append(time.time())
        return [Retry("cannot connect") for _ in entries]

    async def on_expired(entry: OutboxEntry) -> None:
        expired.append(entry)

    try:
        await outbox.put(A, b"x", ref="late")
        outbox.start(None, deliver=deliver, expired=on_expired)
        await eventually("expiry", lambda: bool(expired))
        await asyncio.sleep(0.3)
        assert [e.ref for e in expired] == ["late"]
        assert expired[0].last_error == "cannot connect"
        assert expired[0].attempts == len(attempts) > 3
        assert await outbox.count() == 0
    finally:
        await outbox.close()
        await db.close()


@pytest.mark.parametrize("kind", ["peer.up", "session.up"])
async def test_a_destination_coming_up_is_retried_within_a_second(
    tmp_path: Path, kind: str
) -> None:
    slow = RetryPolicy(initial=600, max_delay=3600, jitter=0.2)
    db, outbox = await _open(tmp_path / "t.db", slow)
    node = FakeNode()
    attempts: list[tuple[bytes, float]] = []
    up = asyncio.Event()

    async def deliver(dest: bytes, entries: list[OutboxEntry]) -> Sequence[DeliveryResult]:
        attempts.append((dest, time.monotonic()))
        if not up.is_set():
            return [Retry("cannot connect") for _ in entries]
        return [Delivered() for _ in entries]

    try:
        await outbox.put(A, b"x", ref="a")
        await outbox.put(B, b"x", ref="b")
        outbox.start(node, deliver=deliver, expired=_no_expiry)
        await eventually("first attempts", lambda: len(attempts) == 2)
        await asyncio.sleep(0.05)  # the retries are recorded
        (head,) = await outbox.pending(A)
        assert head.attempts == 1 and head.next_attempt > time.time() + 400
        up.set()
        node.events.publish(NodeEvent(kind, {"key": C.hex()}))  # another node: nothing
        node.events.publish(NodeEvent("peer.down", {"key": A.hex()}))
        await asyncio.sleep(0.1)
        assert len(attempts) == 2
        sent = time.monotonic()
        node.events.publish(NodeEvent(kind, {"key": A.hex(), "uri": "tcp://x"}))
        await eventually("the retry", lambda: len(attempts) == 3, timeout=1.0)
        assert attempts[2][0] == A and attempts[2][1] - sent < 1.0
        print(f"retry after {kind}: {(attempts[2][1] - sent) * 1000:.1f} ms")
        await asyncio.sleep(0.05)
        assert [e.ref for e in await outbox.pending()] == ["b"]  # B stays in its backoff
    finally:
        await outbox.close()
        await db.close()


async def test_a_wake_during_an_attempt_is_not_lost(tmp_path: Path) -> None:
    db, outbox = await _open(tmp_path / "t.db", RetryPolicy(initial=600, max_delay=600))
    attempts: list[float] = []
    release = asyncio.Event()

    async def deliver(dest: bytes, entries: list[OutboxEntry]) -> Sequence[DeliveryResult]:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            await release.wait()
            return [Retry("timed out") for _ in entries]
        return [Delivered() for _ in entries]

    try:
        await outbox.put(A, b"x", ref="a")
        outbox.start(None, deliver=deliver, expired=_no_expiry)
        await eventually("first attempt", lambda: len(attempts) == 1)
        await outbox.wake(A)  # the node came up while the attempt was still running
        release.set()
        await eventually("the retry", lambda: len(attempts) == 2, timeout=1.0)
    finally:
        await outbox.close()
        await db.close()


async def test_deliver_errors_and_timeouts_become_retries(tmp_path: Path) -> None:
    db, outbox = await _open(tmp_path / "t.db", attempt_timeout=0.05)
    calls = 0

    async def deliver(dest: bytes, entries: list[OutboxEntry]) -> Sequence[DeliveryResult]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("network unreachable")
        if calls == 2:
            await asyncio.sleep(1)
        if calls == 3:
            return []  # a bug in deliver: wrong number of results
        return [Delivered() for _ in entries]

    try:
        await outbox.put(A, b"x", ref="a")
        outbox.start(None, deliver=deliver, expired=_no_expiry)
        await eventually("delivered", lambda: calls == 4)
        await asyncio.sleep(0.05)
        assert await outbox.count() == 0
    finally:
        await outbox.close()
        await db.close()


def test_backoff_doubles_to_the_cap_and_jitter_only_shortens() -> None:
    policy = RetryPolicy(initial=60, max_delay=3600, jitter=0.0)
    assert [policy.base_delay(n) for n in range(0, 9)] == [0, 60, 120, 240, 480, 960, 1920,
                                                           3600, 3600]  # fmt: skip
    assert policy.base_delay(10**9) == 3600
    tripling = RetryPolicy(initial=1, factor=3, max_delay=100)
    assert [tripling.base_delay(n) for n in range(1, 6)] == [1, 3, 9, 27, 81]
    jittery = RetryPolicy(initial=10, max_delay=100, jitter=0.2)
    rng = random.Random(7)
    delays = [jittery.delay(3, rng) for _ in range(1000)]
    assert all(32 <= d <= 40 for d in delays)
    assert min(delays) < 32.5 and max(delays) > 39.5  # spread over the whole band


def test_next_attempt_never_passes_expiry() -> None:
    policy = RetryPolicy(initial=100, max_delay=100, jitter=0.0, expiry=250)
    rng = random.Random(1)
    assert policy.next_attempt(0, 1, 10, rng) == 110
    assert policy.next_attempt(0, 3, 200, rng) == 250  # the last try is at expiry
    assert policy.next_attempt(0, 4, 250, rng) is None


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"initial": 0}, "initial"),
        ({"initial": 10, "max_delay": 5}, "initial"),
        ({"factor": 0.5}, "factor"),
        ({"jitter": 1.0}, "jitter"),
        ({"expiry": 0}, "expiry"),
    ],
)
def test_bad_retry_policies_are_refused(kw: dict[str, float], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        RetryPolicy(**kw)


async def test_the_scheduler_bounds_concurrency_and_pauses_a_failing_batch() -> None:
    work = list(range(10))
    running, peak, runs = 0, 0, [0] * 10

    async def find(now: float, free: int, busy: set[Hashable]) -> list[int]:
        return [w for w in work if w not in busy][:free]

    async def next_due(busy: set[Hashable]) -> float | None:
        return time.time() if [w for w in work if w not in busy] else None

    async def run(item: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        runs[item] += 1
        await asyncio.sleep(0.01)
        running -= 1
        if item == 0:
            raise RuntimeError("a bug in run")
        work.remove(item)

    scheduler: Scheduler[int] = Scheduler(
        name="t", find=find, keys=lambda i: (i,), next_due=next_due, run=run, concurrency=3
    )
    task = asyncio.create_task(scheduler.run())
    try:
        await eventually("the others done", lambda: work == [0])
        await asyncio.sleep(0.3)
        assert peak == 3
        assert runs[1:] == [1] * 9
        assert runs[0] == 1  # the failing one is held back (1 s), not retried in a loop
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_put_with_commits_the_app_row_and_the_entry_together_or_neither(
    tmp_path: Path,
) -> None:
    db, outbox = await _open(tmp_path / "t.db")

    def row(x: int) -> Callable[[sqlite3.Connection], int]:
        def write(conn: sqlite3.Connection) -> int:
            conn.execute("INSERT INTO app (x) VALUES (?)", (x,))
            if x < 0:
                raise ValueError("the app refused it")
            return x * 10

        return write

    try:
        results = await asyncio.gather(
            *(outbox.put_with(A, b"p", ref=f"r{x}", also=row(x)) for x in (1, -1, 2)),
            return_exceptions=True,
        )
        assert isinstance(results[1], ValueError)  # refused alone; the others committed
        assert [r[1] for r in results if isinstance(r, tuple)] == [10, 20]
        other = sqlite3.connect(tmp_path / "t.db")
        assert sorted(x for (x,) in other.execute("SELECT x FROM app")) == [1, 2]
        assert [r for (r,) in other.execute("SELECT ref FROM outbox_t ORDER BY id")] == [
            "r1",
            "r2",
        ]
        other.close()
        again = await outbox.put_with(A, b"p", ref="r1", also=row(99))  # already queued
        assert again[1] is None and await outbox.count() == 2
    finally:
        await db.close()


async def test_a_new_entry_goes_out_at_once_but_never_before_older_ones(tmp_path: Path) -> None:
    # B's first entry is in a long backoff: B's next entry waits behind it while A's goes
    # at once (it could not be delivered at all if it waited for B's backoff).
    policy = RetryPolicy(initial=3600, max_delay=3600, jitter=0.0, expiry=36000)
    db, outbox = await _open(tmp_path / "t.db", policy=policy)
    got: list[str] = []
    refuse = {"b0"}

    async def deliver(dest: bytes, entries: list[OutboxEntry]) -> Sequence[DeliveryResult]:
        results: list[DeliveryResult] = []
        for entry in entries:
            if entry.ref in refuse or (results and isinstance(results[-1], Retry)):
                refuse.discard(entry.ref)
                results.append(Retry("not yet"))
            else:
                got.append(entry.ref)
                results.append(Delivered())
        return results

    try:
        outbox.start(None, deliver=deliver, expired=_no_expiry)
        await outbox.put(B, b"x", ref="b0")
        await eventually("b0 refused once", lambda: not refuse, timeout=60)
        await outbox.put(B, b"x", ref="b1")
        await outbox.put(A, b"x", ref="a0")
        await eventually("a0 delivered", lambda: "a0" in got, timeout=60)
        assert "b1" not in got  # behind b0, whose retry is an hour away
        await outbox.wake(B)  # B is reachable again: b0, then b1
        await eventually("B delivered in order", lambda: "b1" in got, timeout=60)
        assert [r for r in got if r.startswith("b")] == ["b0", "b1"]
    finally:
        await outbox.close()
        await db.close()


async def test_a_delivered_write_commits_with_the_removal_then_announces(tmp_path: Path) -> None:
    db, outbox = await _open(tmp_path / "t.db")
    announced: list[int] = []
    seen_in_db: list[int] = []

    def mark(x: int) -> Callable[[sqlite3.Connection], Callable[[], None] | None]:
        def write(conn: sqlite3.Connection) -> Callable[[], None] | None:
            conn.execute("INSERT INTO app (x) VALUES (?)", (x,))
            if x == 2:
                return None  # nothing to announce

            def after() -> None:
                other = sqlite3.connect(tmp_path / "t.db")  # committed by now
                seen_in_db.extend(v for (v,) in other.execute("SELECT x FROM app WHERE x = ?",
                                                              (x,)))  # fmt: skip
                other.close()
                announced.append(x)

            return after

        return write

    async def deliver(dest: bytes, entries: list[OutboxEntry]) -> Sequence[DeliveryResult]:
        return [Delivered(mark(int(e.ref))) for e in entries]

    try:
        for x in (1, 2, 3):
            await outbox.put(A, b"x", ref=str(x))
        outbox.start(None, deliver=deliver, expired=_no_expiry)
        await eventually("all removed", lambda: len(announced) == 2)
        await eventually("outbox empty", lambda: not outbox._scheduler.busy)
        assert await outbox.count() == 0
        assert sorted(announced) == [1, 3] and sorted(seen_in_db) == [1, 3]
    finally:
        await outbox.close()
        await db.close()
