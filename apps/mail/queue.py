"""The outbound queue: ``outbox.db`` (SQLite through aiosqlite, WAL, versioned migrations).

A submitted message is stored once (``messages``) with one ``deliveries`` row per
recipient node, all in ONE transaction that commits before the submission server says
250. A delivery row is ``pending`` until the recipient's node answered 250 to the end of
DATA (``delivered``) or it failed for good and its bounce is in the sender's INBOX
(``failed``). A message leaves the queue once no delivery is pending and its Sent copy
is stored. Nothing is removed before the remote end has the mail: a crash at any point
replays from the last commit, and the receiving side de-duplicates replays by
Message-ID and sender key.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import AppDatabase, MeshError

__all__ = [
    "OUTBOX_FILE_NAME",
    "SCHEMA_VERSION",
    "Delivery",
    "OutboxQueue",
    "QueueFull",
    "QueuedMessage",
    "read_queue",
]

log = logging.getLogger(__name__)

OUTBOX_FILE_NAME = "outbox.db"
MAX_GROUP_COMMIT = 64  # submissions sharing one transaction at most

MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            token TEXT NOT NULL UNIQUE,
            sender TEXT NOT NULL,
            message_id TEXT NOT NULL,
            raw BLOB NOT NULL,
            created REAL NOT NULL,
            sent_copy INTEGER NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE deliveries (
            id INTEGER PRIMARY KEY,
            message INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
            recipient TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'delivered', 'failed')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt REAL NOT NULL,
            last_error TEXT,
            updated REAL NOT NULL,
            UNIQUE (message, recipient)
        )""",
        "CREATE INDEX deliveries_due ON deliveries(state, next_attempt)",
    ),
    # A message leaves the queue by itself once no delivery is pending and its Sent copy
    # is filed: each "mark" is then one statement (one round trip to the database thread).
    2: (
        """CREATE TRIGGER deliveries_finished AFTER UPDATE OF state ON deliveries
            WHEN NEW.state != 'pending'
        BEGIN
            DELETE FROM messages WHERE id = NEW.message AND sent_copy = 1 AND NOT EXISTS (
                SELECT 1 FROM deliveries WHERE message = NEW.message AND state = 'pending');
        END""",
        """CREATE TRIGGER messages_sent_copy AFTER UPDATE OF sent_copy ON messages
            WHEN NEW.sent_copy = 1
        BEGIN
            DELETE FROM messages WHERE id = NEW.id AND NOT EXISTS (
                SELECT 1 FROM deliveries WHERE message = NEW.id AND state = 'pending');
        END""",
    ),
}
SCHEMA_VERSION = max(MIGRATIONS)


class QueueFull(MeshError):
    """The queue holds ``max_queue`` messages already; submission answers 452."""


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    id: int
    token: str


@dataclass(frozen=True, slots=True)
class _Enqueue:
    """One submission waiting for its group commit."""

    token: str
    sender: str
    raw: bytes
    message_id: str
    recipients: tuple[str, ...]
    stamp: float
    max_queue: int | None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One recipient node's delivery of one message (without the message bytes)."""

    id: int
    message: int
    token: str
    sender: str
    message_id: str
    recipient: str
    attempts: int
    created: float
    next_attempt: float
    last_error: str | None


_DELIVERY_COLUMNS = (
    "d.id, d.message, m.token, m.sender, m.message_id, d.recipient, d.attempts, "
    "m.created, d.next_attempt, d.last_error"
)


def _delivery(row: Any) -> Delivery:
    return Delivery(*row)


def _enqueue_rows(
    conn: sqlite3.Connection, items: list[_Enqueue]
) -> list[QueuedMessage | BaseException]:
    """Insert ``items`` in the caller's open transaction: three statements in all."""
    results: list[QueuedMessage | BaseException] = []
    messages: list[tuple[Any, ...]] = []
    deliveries: list[tuple[Any, ...]] = []
    count, top = conn.execute("SELECT count(*), coalesce(max(id), 0) FROM messages").fetchone()
    for item in items:
        if item.max_queue is not None and count >= item.max_queue:
            results.append(QueueFull(f"the outbound queue holds {count} messages (the limit)"))
            continue
        count += 1
        top += 1  # ids as SQLite would pick them (max + 1), known before the insert
        messages.append((top, item.token, item.sender, item.message_id, item.raw, item.stamp))
        deliveries.extend((top, rcpt, item.stamp, item.stamp) for rcpt in item.recipients)
        results.append(QueuedMessage(top, item.token))
    if messages:
        conn.executemany(
            "INSERT INTO messages (id, token, sender, message_id, raw, created) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            messages,
        )
        conn.executemany(
            "INSERT INTO deliveries (message, recipient, next_attempt, updated) "
            "VALUES (?, ?, ?, ?)",
            deliveries,
        )
    return results


class OutboxQueue:
    """The queue. ``await OutboxQueue.open(path)``; ``await close()``."""

    def __init__(self, database: AppDatabase) -> None:
        self._database = database
        self._db = database.conn
        self.path = database.path
        self._lock = database.lock
        self._enqueues = database.group_commit(
            _enqueue_rows, max_batch=MAX_GROUP_COMMIT, name="outbox"
        )

    @classmethod
    async def open(cls, path: Path) -> OutboxQueue:
        path = Path(path)
        return cls(await AppDatabase.open(path, MIGRATIONS, what=str(path), name="outbox-writer"))

    async def close(self) -> None:
        await self._database.close()

    async def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        return list(await self._db.execute_fetchall(sql, args))

    async def _one(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        rows = await self._all(sql, args)
        return rows[0] if rows else None

    # -- submission -----------------------------------------------------------------------
    async def enqueue(
        self,
        sender: str,
        raw: bytes,
        message_id: str,
        recipients: Iterable[str],
        *,
        now: float | None = None,
        max_queue: int | None = None,
    ) -> QueuedMessage:
        """Store the message and one pending delivery per recipient, in one transaction.

        Returns once that transaction is committed (``synchronous=FULL``). Concurrent
        submissions share a transaction (group commit, :mod:`core.groupcommit`):
        each message is still all-or-nothing, and each caller hears only after the commit
        that holds its message.
        """
        stamp = time.time() if now is None else now
        unique = tuple(dict.fromkeys(recipients))
        if not unique:
            raise ValueError("a queued message needs at least one recipient")
        item = _Enqueue(secrets.token_hex(16), sender, raw, message_id, unique, stamp, max_queue)
        return await self._enqueues.submit(item)

    # -- the runner's view ------------------------------------------------------------------
    async def due(self, now: float, *, limit: int, exclude: Iterable[int] = ()) -> list[Delivery]:
        """Pending deliveries whose time has come, oldest first, not in ``exclude``."""
        skip = set(exclude)
        rows = await self._all(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries d JOIN messages m ON m.id = d.message "
            "WHERE d.state = 'pending' AND d.next_attempt <= ? "
            "ORDER BY d.next_attempt, d.id LIMIT ?",
            (now, limit + len(skip)),
        )
        return [d for d in map(_delivery, rows) if d.id not in skip][:limit]

    async def next_due(self, exclude: Iterable[int] = ()) -> float | None:
        skip = tuple(exclude)
        clause = f" AND id NOT IN ({','.join('?' * len(skip))})" if skip else ""
        row = await self._one(
            f"SELECT min(next_attempt) FROM deliveries WHERE state = 'pending'{clause}", skip
        )
        return None if row is None or row[0] is None else float(row[0])

    async def raw(self, message: int) -> bytes | None:
        row = await self._one("SELECT raw FROM messages WHERE id = ?", (message,))
        return None if row is None else bytes(row[0])

    async def raws(self, messages: list[int]) -> dict[int, bytes]:
        unique = tuple(dict.fromkeys(messages))
        marks = ",".join("?" * len(unique))
        rows = await self._all(f"SELECT id, raw FROM messages WHERE id IN ({marks})", unique)
        return {int(r[0]): bytes(r[1]) for r in rows}

    async def mark_delivered(self, delivery: int, *, now: float | None = None) -> None:
        await self._finish(delivery, "delivered", None, now)

    async def mark_delivered_many(self, deliveries: list[int], *, now: float | None = None) -> None:
        stamp = time.time() if now is None else now
        marks = ",".join("?" * len(deliveries))
        async with self._lock:
            await self._db.execute(
                "UPDATE deliveries SET state = 'delivered', attempts = attempts + 1, "
                f"last_error = NULL, updated = ? WHERE id IN ({marks})",
                (stamp, *deliveries),
            )

    async def mark_failed(self, delivery: int, error: str, *, now: float | None = None) -> None:
        await self._finish(delivery, "failed", error, now)

    async def _finish(
        self, delivery: int, state: str, error: str | None, now: float | None
    ) -> None:
        stamp = time.time() if now is None else now
        async with self._lock:  # one statement: autocommit, the trigger collects the message
            await self._db.execute(
                "UPDATE deliveries SET state = ?, attempts = attempts + 1, last_error = ?, "
                "updated = ? WHERE id = ?",
                (state, error, stamp, delivery),
            )

    async def mark_retry(
        self, delivery: int, next_attempt: float, error: str, *, now: float | None = None
    ) -> None:
        stamp = time.time() if now is None else now
        async with self._lock:
            await self._db.execute(
                "UPDATE deliveries SET attempts = attempts + 1, next_attempt = ?, "
                "last_error = ?, updated = ? WHERE id = ? AND state = 'pending'",
                (next_attempt, error, stamp, delivery),
            )

    async def retry_now(self, recipient: str, *, now: float | None = None) -> int:
        """Deferred deliveries to ``recipient`` become due at once; how many."""
        stamp = time.time() if now is None else now
        async with self._lock:
            cur = await self._db.execute(
                "UPDATE deliveries SET next_attempt = ? "
                "WHERE recipient = ? AND state = 'pending' AND next_attempt > ?",
                (stamp, recipient, stamp),
            )
            return cur.rowcount

    async def unsent_copies(self, limit: int = 100) -> list[tuple[int, str, bytes]]:
        """Messages whose Sent copy is not stored yet: ``(id, token, raw)``."""
        rows = await self._all(
            "SELECT id, token, raw FROM messages WHERE sent_copy = 0 ORDER BY id LIMIT ?",
            (limit,),
        )
        return [(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    async def mark_sent_copy(self, message: int) -> None:
        await self.mark_sent_copies([message])

    async def mark_sent_copies(self, messages: list[int]) -> None:
        marks = ",".join("?" * len(messages))
        async with self._lock:
            await self._db.execute(
                f"UPDATE messages SET sent_copy = 1 WHERE id IN ({marks})", tuple(messages)
            )

    # -- inspection -----------------------------------------------------------------------
    async def pending(self) -> list[Delivery]:
        rows = await self._all(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries d JOIN messages m ON m.id = d.message "
            "WHERE d.state = 'pending' ORDER BY d.next_attempt, d.id"
        )
        return [_delivery(r) for r in rows]

    async def message_count(self) -> int:
        (count,) = await self._one("SELECT count(*) FROM messages")
        return int(count)


def read_queue(path: Path) -> list[Delivery]:
    """Pending deliveries read straight from ``outbox.db`` (read-only; for ``mesh mail queue``).

    Safe while the node runs: WAL lets a reader see the last commit without blocking it.
    """
    if not path.exists():
        return []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise MeshError(f"cannot open {path}: {exc}") from None
    try:
        rows = db.execute(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries d JOIN messages m ON m.id = d.message "
            "WHERE d.state = 'pending' ORDER BY d.next_attempt, d.id"
        ).fetchall()
    except sqlite3.Error as exc:
        raise MeshError(f"cannot read the queue in {path}: {exc}") from None
    finally:
        db.close()
    return [_delivery(r) for r in rows]
