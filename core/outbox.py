"""The durable outbox: what an app sends to other nodes, kept until it is delivered.

* :meth:`Outbox.put` returns once the entry is committed (``synchronous=FULL``, group
  commit: concurrent puts share one transaction); an app acknowledges to its person or
  peer only after that. The outbox is bounded (:class:`OutboxFull`).
* One entry per destination node (its 32-byte key); entries to one destination are
  handed to ``deliver`` in ``put`` order (FIFO per destination: only a destination's
  oldest entries are ever in flight, and a destination is due when its oldest entry is).
* Results per entry: :class:`Delivered` (removed), :class:`Failed` (removed; the app
  reported it), :class:`Retry` (exponential backoff with jitter, :class:`RetryPolicy`,
  until the entry is ``expiry`` old; then ``expired(entry)`` is called once and the entry
  removed).
* A destination is retried at once when the node publishes ``peer.up`` or
  ``session.up`` naming its key (``data["key"]``, hex), or on :meth:`Outbox.wake`.
* Crash safety: an entry is removed only after ``deliver`` said it was delivered, in a
  commit of its own. A kill -9 therefore loses nothing; what was in flight at that moment
  (at most ``max_batch`` entries per destination being delivered) is sent again after the
  restart, with the same ``ref`` and ``id``: receivers de-duplicate on them, which makes
  the delivery exactly-once end to end. The same holds for ``expired``: called before its
  entry is removed, it may run again for that entry after a crash in between.

:class:`Scheduler` is the loop under it (find due work, run up to ``concurrency``
batches at once, sleep until the next due time or a wake), shared with apps that keep
their own queue tables (mail).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, Protocol, TypeVar

from core.db import AppDatabase
from core.errors import MeshError, UsageError
from core.events import EventBus
from core.tasks import cancel_and_wait, within

__all__ = [
    "WAKE_EVENTS",
    "Delivered",
    "DeliveryResult",
    "Failed",
    "Outbox",
    "OutboxEntry",
    "OutboxFull",
    "Retry",
    "RetryPolicy",
    "Scheduler",
    "watch_reachable",
]

log = logging.getLogger(__name__)

B = TypeVar("B")
T = TypeVar("T")

WAKE_EVENTS = frozenset({"peer.up", "session.up"})  # node events naming a reachable key
KEY_SIZE = 32
MAX_IDLE_WAIT = 60.0  # re-check at least this often (clock changes, missed wakes)
ERROR_PAUSE = 1.0  # after an unexpected failure of a scheduler pass
_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


# -- policy and results ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded by ``max_delay``; expiry after ``expiry``.

    The n-th retry (n ≥ 1) waits ``min(initial · factor^(n-1), max_delay)`` seconds,
    shortened by up to ``jitter`` (a fraction in [0, 1)) so that many entries do not
    retry in lockstep. An entry older than ``expiry`` seconds is given up.
    """

    initial: float = 60.0
    factor: float = 2.0
    max_delay: float = 3600.0
    jitter: float = 0.1
    expiry: float = 30 * 86400.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.max_delay:
            raise UsageError(f"retry policy: need 0 < initial <= max_delay, got {self}")
        if self.factor < 1:
            raise UsageError(f"retry policy: factor must be at least 1, got {self.factor}")
        if self.expiry <= 0:
            raise UsageError(f"retry policy: expiry must be positive, got {self.expiry}")
        if not 0 <= self.jitter < 1:
            raise UsageError(f"retry policy: jitter must be in [0, 1), got {self.jitter}")

    def base_delay(self, attempt: int) -> float:
        """The delay after ``attempt`` failed attempts, before jitter."""
        if attempt < 1:
            return 0.0
        delay = self.initial
        for _ in range(min(attempt - 1, 1024)):
            delay *= self.factor
            if delay >= self.max_delay:
                return float(self.max_delay)
        return float(delay)

    def delay(self, attempt: int, rng: random.Random) -> float:
        return self.base_delay(attempt) * (1.0 - self.jitter * rng.random())

    def next_attempt(
        self, created: float, attempts: int, now: float, rng: random.Random
    ) -> float | None:
        """When to try again after ``attempts`` failed attempts; None once expired.

        Never later than the expiry time, so the last attempt happens at expiry.
        """
        expires = created + self.expiry
        if now >= expires:
            return None
        return min(now + self.delay(attempts, rng), expires)


@dataclass(frozen=True, slots=True)
class Delivered:
    """The destination has the entry (it answered so).

    ``write(connection)``, if given, runs in the transaction that removes the entry (the
    app's own record of the delivery commits with it); a callable it returns is called
    on the event loop once that transaction is committed (to announce the change).
    """

    write: Callable[[sqlite3.Connection], Callable[[], None] | None] | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    """Not delivered this time (unreachable, busy, timed out): try again later."""

    reason: str


@dataclass(frozen=True, slots=True)
class Failed:
    """Refused for good: removed without retrying (the app has told its person)."""

    reason: str


DeliveryResult = Delivered | Retry | Failed


class OutboxFull(MeshError):
    """The outbox holds ``max_entries`` already; nothing was added."""


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    id: int  # increasing in put() order; never reused
    destination: bytes  # the destination node's 32-byte key
    payload: bytes
    ref: str  # the app's own name for it (unique in the outbox)
    created: float
    attempts: int
    next_attempt: float
    last_error: str | None


DeliverFn = Callable[[bytes, list[OutboxEntry]], Awaitable[Sequence[DeliveryResult]]]
ExpiredFn = Callable[[OutboxEntry], Awaitable[None]]
# (destination, entries) -> one result per entry, or None: no other way to it now
HandoffFn = Callable[[bytes, list[OutboxEntry]], Awaitable[Sequence[DeliveryResult] | None]]


class HasEvents(Protocol):
    """What the outbox needs of a node: its event bus (``core.Node`` has one)."""

    @property
    def events(self) -> EventBus: ...


async def watch_reachable(events: EventBus, wake: Callable[[bytes], Awaitable[None]]) -> None:
    """Until cancelled: ``await wake(key)`` for each node event saying ``key`` is reachable.

    Those are :data:`WAKE_EVENTS` whose ``data["key"]`` is a 32-byte key in hex.
    """
    async with events.subscribe() as sub:
        async for event in sub:
            if event.kind not in WAKE_EVENTS:
                continue
            try:
                key = bytes.fromhex(str(event.data.get("key") or ""))
            except ValueError:
                continue
            if len(key) != KEY_SIZE:
                continue
            try:
                await wake(key)
            except Exception:
                log.exception("waking the deliveries to %s failed", key.hex())


# -- the scheduler ----------------------------------------------------------------------------
class Scheduler(Generic[B]):
    """Runs due batches, ``concurrency`` at once, until cancelled.

    ``find(now, free, busy)`` returns up to ``free`` due batches, leaving out work whose
    keys are in ``busy``; ``keys(batch)`` names a batch's work (entry ids, destinations);
    ``next_due(busy)`` is the next due time of the rest (None: nothing queued).
    ``run(batch)`` delivers one batch; the pass after it ends starts what became due.
    """

    def __init__(
        self,
        *,
        name: str,
        find: Callable[[float, int, set[Hashable]], Awaitable[list[B]]],
        keys: Callable[[B], Iterable[Hashable]],
        next_due: Callable[[set[Hashable]], Awaitable[float | None]],
        run: Callable[[B], Awaitable[None]],
        concurrency: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.name = name
        self._find, self._keys, self._next_due, self._run = find, keys, next_due, run
        self.concurrency = concurrency
        self._clock = clock
        self._wake = asyncio.Event()
        self.busy: set[Hashable] = set()
        self.running = 0  # batches in flight
        self._tg: asyncio.TaskGroup | None = None  # run()'s, while it runs

    def wake(self) -> None:
        """Look for due work now (something was queued or became reachable)."""
        self._wake.set()

    def offer(self, batch: B) -> bool:
        """Start ``batch`` now, without a pass, if a slot is free and none of its keys is
        busy; whether it was started. The caller knows it is due (just queued, oldest of
        its keys)."""
        keys = list(self._keys(batch))
        if self._tg is None or self.running >= self.concurrency or not self.busy.isdisjoint(keys):
            return False
        self._start(self._tg, batch, keys)
        return True

    async def run(self) -> None:
        """Until cancelled; batches run in this call's TaskGroup (cancelled with it)."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            try:
                while True:
                    self._wake.clear()
                    try:
                        wait = await self._pass(tg)
                    except Exception:
                        log.exception("%s: a scheduler pass failed; retrying shortly", self.name)
                        wait = ERROR_PAUSE
                    with contextlib.suppress(TimeoutError):
                        await within(self._wake.wait(), wait)
            finally:
                self._tg = None  # offer() starts nothing once the group is closing

    async def _pass(self, tg: asyncio.TaskGroup) -> float:
        free = self.concurrency - self.running
        if free > 0:
            for batch in await self._find(self._clock(), free, self.busy):
                keys = list(self._keys(batch))
                # offer() may have started some of this work while _find was running.
                if self.running < self.concurrency and self.busy.isdisjoint(keys):
                    self._start(tg, batch, keys)
        if self.running >= self.concurrency:
            return MAX_IDLE_WAIT  # every slot is busy: the next one to finish wakes us
        next_due = await self._next_due(self.busy)
        if next_due is None:
            return MAX_IDLE_WAIT
        return min(MAX_IDLE_WAIT, max(0.0, next_due - self._clock()))

    def _start(self, tg: asyncio.TaskGroup, batch: B, keys: list[Hashable]) -> None:
        self.busy.update(keys)
        self.running += 1
        first = keys[0].hex()[:16] if isinstance(keys[0], bytes) else keys[0]
        tg.create_task(self._one(batch, keys), name=f"{self.name}-{first}")

    async def _one(self, batch: B, keys: list[Hashable]) -> None:
        try:
            await self._run(batch)
        except Exception:  # run() handles its own failures: this is a bug or a broken disk
            log.exception("%s: a batch failed; its work is retried shortly", self.name)
            await asyncio.sleep(ERROR_PAUSE)  # its keys stay busy: no tight loop
        finally:
            self.busy.difference_update(keys)
            self.running -= 1
            self._wake.set()


# -- the outbox ---------------------------------------------------------------------------
_COLUMNS = "id, destination, payload, ref, created, attempts, next_attempt, last_error"


def _entry(row: Any) -> OutboxEntry:
    return OutboxEntry(
        int(row[0]),
        bytes(row[1]),
        bytes(row[2]),
        str(row[3]),
        float(row[4]),
        int(row[5]),
        float(row[6]),
        row[7],
    )


@dataclass(frozen=True, slots=True)
class _Put:
    destination: bytes
    payload: bytes
    ref: str
    stamp: float
    also: Callable[[sqlite3.Connection], Any] | None


@dataclass(frozen=True, slots=True)
class _Queued:
    entry: OutboxEntry
    head: bool  # no older entry for its destination: it may go out at once
    also: Any  # what ``also`` returned (None without one)


class Outbox:
    """``await Outbox.open(db, name=..., policy=..., max_entries=...)``; see the module."""

    def __init__(
        self,
        db: AppDatabase,
        name: str,
        policy: RetryPolicy,
        max_entries: int,
        *,
        max_batch: int,
        concurrency: int,
        attempt_timeout: float,
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self.db = db
        self.name = name
        self.policy = policy
        self.max_entries = max_entries
        self.max_batch = max_batch
        self.attempt_timeout = attempt_timeout
        self._table = f"outbox_{name}"
        self._clock = clock
        self._rng = rng
        self._puts = db.group_commit(self._put_rows, max_batch=64, name=f"outbox {name}")
        self._scheduler: Scheduler[tuple[bytes, list[OutboxEntry]]] = Scheduler(
            name=f"outbox-{name}",
            find=self._due,
            keys=lambda batch: (batch[0],),
            next_due=self._next_due,
            run=self._attempt,
            concurrency=concurrency,
            clock=clock,
        )
        self._rewake: set[bytes] = set()  # woken while in flight: no backoff after it
        self._deliver: DeliverFn | None = None
        self._expired: ExpiredFn | None = None
        self._handoff: HandoffFn | None = None
        self._handoff_after = 0.0
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        db: AppDatabase,
        *,
        name: str,
        policy: RetryPolicy,
        max_entries: int,
        max_batch: int = 20,
        concurrency: int = 8,
        attempt_timeout: float = 300.0,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> Outbox:
        """The outbox ``name`` (its table ``outbox_<name>`` in ``db``, made if missing).

        ``max_batch``: entries handed to one ``deliver`` call at most; ``concurrency``:
        destinations in flight at once; ``attempt_timeout``: seconds one call may take.
        """
        if not _NAME.fullmatch(name):
            raise ValueError(f"outbox name {name!r}: lower-case letters, digits and _")
        if max_entries < 1 or max_batch < 1 or attempt_timeout <= 0:
            raise ValueError("max_entries, max_batch and attempt_timeout must be positive")
        table = f"outbox_{name}"

        def schema(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {table} ("
                "id INTEGER PRIMARY KEY AUTOINCREMENT, destination BLOB NOT NULL, "
                "payload BLOB NOT NULL, ref TEXT NOT NULL UNIQUE, created REAL NOT NULL, "
                "attempts INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL, "
                "last_error TEXT)"
            )
            conn.execute(f"CREATE INDEX IF NOT EXISTS {table}_dest ON {table}(destination, id)")

        await db.transaction(schema)
        return cls(
            db,
            name,
            policy,
            max_entries,
            max_batch=max_batch,
            concurrency=concurrency,
            attempt_timeout=attempt_timeout,
            clock=clock,
            rng=rng or random.Random(),
        )

    # -- queueing ---------------------------------------------------------------------------
    async def put(self, destination: bytes, payload: bytes, *, ref: str) -> OutboxEntry:
        """Queue ``payload`` for ``destination``; returns once it is committed.

        A ``ref`` already queued returns that entry unchanged (a replayed put adds
        nothing). Raises :class:`OutboxFull` when ``max_entries`` are queued.
        """
        entry, _ = await self.put_with(destination, payload, ref=ref, also=None)
        return entry

    async def put_with(
        self,
        destination: bytes,
        payload: bytes,
        *,
        ref: str,
        also: Callable[[sqlite3.Connection], T] | None,
    ) -> tuple[OutboxEntry, T | None]:
        """:meth:`put`, with ``also(connection)`` run in the same transaction (the app's
        own row for what it queues: both are committed or neither is); returns the entry
        and what ``also`` returned. An exception from ``also`` refuses this put alone
        (raised here; nothing of it is written). ``also`` does not run for a ``ref``
        already queued (None is returned for it).

        An entry that is its destination's oldest goes out at once when the destination
        is idle and a delivery slot is free (no scheduler pass in between).
        """
        if len(destination) != KEY_SIZE:
            raise UsageError(f"an outbox destination is a {KEY_SIZE}-byte node key")
        item = _Put(bytes(destination), payload, ref, self._clock(), also)
        queued = await self._puts.submit(item)
        batch = (queued.entry.destination, [queued.entry])
        if not (queued.head and self._scheduler.offer(batch)):
            self._scheduler.wake()
        return queued.entry, queued.also

    def _put_rows(
        self, conn: sqlite3.Connection, items: list[_Put]
    ) -> list[_Queued | BaseException]:
        t = self._table
        (count,) = conn.execute(f"SELECT count(*) FROM {t}").fetchone()
        results: list[_Queued | BaseException] = []
        for item in items:
            row = conn.execute(f"SELECT {_COLUMNS} FROM {t} WHERE ref = ?", (item.ref,)).fetchone()
            if row is not None:
                results.append(_Queued(_entry(row), head=False, also=None))
                continue
            if count >= self.max_entries:
                results.append(
                    OutboxFull(
                        f"the {self.name} outbox holds {count} entries (its limit); "
                        "wait for deliveries or remove entries, then try again"
                    )
                )
                continue
            older = conn.execute(
                f"SELECT 1 FROM {t} WHERE destination = ? LIMIT 1", (item.destination,)
            ).fetchone()
            conn.execute("SAVEPOINT outbox_put")
            try:
                also = item.also(conn) if item.also is not None else None
                cur = conn.execute(
                    f"INSERT INTO {t} (destination, payload, ref, created, next_attempt) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (item.destination, item.payload, item.ref, item.stamp, item.stamp),
                )
            except Exception as exc:  # this put alone is refused; the batch goes on
                conn.execute("ROLLBACK TO outbox_put")
                conn.execute("RELEASE outbox_put")
                results.append(exc)
                continue
            conn.execute("RELEASE outbox_put")
            count += 1
            assert cur.lastrowid is not None
            entry = OutboxEntry(
                cur.lastrowid, item.destination, item.payload, item.ref, item.stamp, 0,
                item.stamp, None,
            )  # fmt: skip
            results.append(_Queued(entry, head=older is None, also=also))
        return results

    async def remove(self, ref: str) -> bool:
        """Drop the entry named ``ref`` (the app cancelled it); whether there was one."""
        return await self.db.execute(f"DELETE FROM {self._table} WHERE ref = ?", (ref,)) > 0

    async def pending(self, destination: bytes | None = None) -> list[OutboxEntry]:
        """Queued entries (of one destination, or all), in put() order."""
        where, args = ("WHERE destination = ?", (destination,)) if destination else ("", ())
        async with self.db.lock:
            rows = await self.db.conn.execute_fetchall(
                f"SELECT {_COLUMNS} FROM {self._table} {where} ORDER BY id", args
            )
        return [_entry(r) for r in rows]

    async def count(self) -> int:
        async with self.db.lock:
            rows = list(await self.db.conn.execute_fetchall(f"SELECT count(*) FROM {self._table}"))
        return int(rows[0][0])

    async def wake(self, destination: bytes | None = None) -> None:
        """Retry ``destination`` (or every destination) now, whatever its backoff."""
        now = self._clock()
        if destination is None:
            await self.db.execute(
                f"UPDATE {self._table} SET next_attempt = ? WHERE next_attempt > ?", (now, now)
            )
            self._rewake.update(d for d in self._scheduler.busy if isinstance(d, bytes))
        else:
            await self.db.execute(
                f"UPDATE {self._table} SET next_attempt = ? "
                "WHERE destination = ? AND next_attempt > ?",
                (now, destination, now),
            )
            if destination in self._scheduler.busy:
                self._rewake.add(destination)
        self._scheduler.wake()

    # -- delivery ---------------------------------------------------------------------------
    def start(
        self,
        node: HasEvents | None,
        *,
        deliver: DeliverFn,
        expired: ExpiredFn,
        handoff: HandoffFn | None = None,
        handoff_after: float = 60.0,
    ) -> None:
        """Start delivering (tasks owned here, ended by :meth:`close`).

        ``node``: whose ``peer.up`` / ``session.up`` events wake a destination (None: no
        events, e.g. in unit tests; :meth:`wake` still works).

        ``handoff``: another way to the destination (a relay, :mod:`core.relay`). Entries
        whose direct delivery has failed for ``handoff_after`` seconds since they were
        queued are given to it after each failed attempt (and an attempt is due at that
        moment, whatever the backoff); what it takes counts as delivered.
        """
        if self._task is not None:
            raise RuntimeError(f"outbox {self.name}: already started")
        if handoff_after < 0:
            raise UsageError("handoff_after must not be negative")
        self._deliver, self._expired = deliver, expired
        self._handoff, self._handoff_after = handoff, handoff_after
        self._task = asyncio.get_running_loop().create_task(
            self._main(node), name=f"outbox-{self.name}"
        )

    async def _main(self, node: HasEvents | None) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._scheduler.run(), name=f"outbox-{self.name}-scheduler")
            if node is not None:
                tg.create_task(self._watch(node.events), name=f"outbox-{self.name}-events")

    async def _watch(self, events: EventBus) -> None:
        await watch_reachable(events, self.wake)

    async def close(self) -> None:
        """Stop delivering (what is in flight is retried after the next start)."""
        if self._task is not None:
            await cancel_and_wait(self._task, what=f"outbox {self.name}")
            self._task = None

    async def _due(
        self, now: float, free: int, busy: set[Hashable]
    ) -> list[tuple[bytes, list[OutboxEntry]]]:
        t = self._table
        async with self.db.lock:
            heads = await self.db.conn.execute_fetchall(
                f"SELECT o.destination FROM {t} o JOIN (SELECT min(id) AS head FROM {t} "
                "GROUP BY destination) h ON o.id = h.head WHERE o.next_attempt <= ? "
                "ORDER BY o.next_attempt, o.id",
                (now,),
            )
            found: list[tuple[bytes, list[OutboxEntry]]] = []
            for (dest,) in heads:
                if bytes(dest) in busy:
                    continue
                rows = await self.db.conn.execute_fetchall(
                    f"SELECT {_COLUMNS} FROM {t} WHERE destination = ? ORDER BY id LIMIT ?",
                    (dest, self.max_batch),
                )
                found.append((bytes(dest), [_entry(r) for r in rows]))
                if len(found) >= free:
                    break
        return found

    async def _next_due(self, busy: set[Hashable]) -> float | None:
        t = self._table
        async with self.db.lock:
            heads = await self.db.conn.execute_fetchall(
                f"SELECT o.destination, o.next_attempt FROM {t} o JOIN (SELECT min(id) AS head "
                f"FROM {t} GROUP BY destination) h ON o.id = h.head ORDER BY o.next_attempt"
            )
        for dest, when in heads:
            if bytes(dest) not in busy:
                return float(when)
        return None

    async def _attempt(self, batch: tuple[bytes, list[OutboxEntry]]) -> None:
        destination, entries = batch
        assert self._deliver is not None
        self._rewake.discard(destination)
        try:
            results = list(
                await within(self._deliver(destination, list(entries)), self.attempt_timeout)
            )
            if len(results) != len(entries):
                log.error(
                    "outbox %s: deliver gave %d results for %d entries",
                    self.name,
                    len(results),
                    len(entries),
                )
                results = [Retry("internal error: wrong number of results")] * len(entries)
        except TimeoutError:
            results = [Retry(f"no answer within {self.attempt_timeout:g} s")] * len(entries)
        except Exception as exc:
            log.warning("outbox %s: deliver to %s failed: %r", self.name, destination.hex(), exc)
            results = [Retry(f"{type(exc).__name__}: {exc}")] * len(entries)
        if self._handoff is not None:
            results = await self._hand_off(destination, entries, results)
        await self._record(destination, entries, results)

    async def _hand_off(
        self, destination: bytes, entries: list[OutboxEntry], results: list[DeliveryResult]
    ) -> list[DeliveryResult]:
        """The failed entries old enough for a hand-off, given to ``handoff`` (in order:
        the oldest ones, up to the first that is not yet old enough)."""
        assert self._handoff is not None
        due = self._clock() - self._handoff_after
        failed: list[int] = []
        for i, (entry, result) in enumerate(zip(entries, results, strict=True)):
            if isinstance(result, Retry) and entry.created <= due:
                failed.append(i)
        if not failed:
            return results
        try:
            async with asyncio.timeout(self.attempt_timeout):
                handed = await self._handoff(destination, [entries[i] for i in failed])
        except Exception as exc:
            log.warning("outbox %s: hand-off to %s failed: %r", self.name, destination.hex(), exc)
            return results
        if handed is None:
            return results
        handed = list(handed)
        if len(handed) != len(failed):
            log.error(
                "outbox %s: handoff gave %d results for %d", self.name, len(handed), len(failed)
            )
            return results
        merged = list(results)
        for i, result in zip(failed, handed, strict=True):
            before = results[i]
            if isinstance(result, Retry) and isinstance(before, Retry):
                result = Retry(f"{before.reason}; {result.reason}")
            merged[i] = result
        return merged

    async def _record(
        self, destination: bytes, entries: list[OutboxEntry], results: list[DeliveryResult]
    ) -> None:
        now = self._clock()
        woken = destination in self._rewake
        done: list[int] = []
        retries: list[tuple[float, str, int]] = []
        expired: list[OutboxEntry] = []
        for entry, result in zip(entries, results, strict=True):
            if isinstance(result, Retry):
                when = self.policy.next_attempt(entry.created, entry.attempts + 1, now, self._rng)
                if when is None:
                    expired.append(
                        replace(entry, attempts=entry.attempts + 1, last_error=result.reason)
                    )
                else:
                    if self._handoff is not None:
                        handoff_at = entry.created + self._handoff_after
                        if handoff_at > now:  # an attempt, then a hand-off, at that time
                            when = min(when, handoff_at)
                    retries.append((now if woken else when, result.reason, entry.id))
            else:
                if isinstance(result, Failed):
                    log.info(
                        "outbox %s: %s refused for good: %s", self.name, entry.ref, result.reason
                    )
                done.append(entry.id)

        writes = [r.write for r in results if isinstance(r, Delivered) and r.write is not None]

        def write(conn: sqlite3.Connection) -> list[Callable[[], None]]:
            conn.executemany(f"DELETE FROM {self._table} WHERE id = ?", [(i,) for i in done])
            conn.executemany(
                f"UPDATE {self._table} SET attempts = attempts + 1, next_attempt = ?, "
                "last_error = ? WHERE id = ?",
                retries,
            )
            return [after for w in writes if (after := w(conn)) is not None]

        if done or retries:
            for after in await self.db.transaction(write):
                try:
                    after()
                except Exception:
                    log.exception("outbox %s: a delivery announcement failed", self.name)
        for entry in expired:
            await self._expire(entry)

    async def _expire(self, entry: OutboxEntry) -> None:
        assert self._expired is not None
        log.warning(
            "outbox %s: %s to %s expired after %d attempts (%s)",
            self.name,
            entry.ref,
            entry.destination.hex(),
            entry.attempts,
            entry.last_error,
        )
        try:
            await self._expired(entry)
        except Exception:
            log.exception("outbox %s: the expiry callback for %s failed", self.name, entry.ref)
        await self.db.execute(f"DELETE FROM {self._table} WHERE id = ?", (entry.id,))
