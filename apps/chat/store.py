"""The chat store on the core app database: conversations, messages, seen ids, pinned
app keys, security events, and FTS5 full-text search over message bodies.

Every write runs on the database's writer thread (``db.transaction`` / group commit);
reads use ``db.conn``. ``messages.seq`` (INTEGER PRIMARY KEY) is the keyset cursor:
``history(before_seq=...)`` reads ``seq < before_seq`` newest first on the
``(conversation, seq)`` index.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apps.chat.envelope import Envelope, Kind
from core import AppDatabase, GroupCommit

__all__ = ["DB_FILE", "MIGRATIONS", "ChatStore", "Incoming", "Stored"]

DB_FILE = "chat.db"
OUT_STATES = ("pending", "relayed", "sent", "delivered", "read", "failed")
# What a receipt may move an outgoing message from (states only move forward; "relayed":
# a relay holds it for the peer, sealed).
_DELIVERED_FROM = ("pending", "relayed", "sent")
_READ_FROM = ("pending", "relayed", "sent", "delivered")

MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE conversations (
            key BLOB PRIMARY KEY,
            request INTEGER NOT NULL DEFAULT 0,
            accepted INTEGER NOT NULL DEFAULT 0,
            muted INTEGER NOT NULL DEFAULT 0,
            read_receipts INTEGER NOT NULL DEFAULT 1,
            last_seq INTEGER NOT NULL DEFAULT 0,
            last_activity REAL NOT NULL DEFAULT 0)""",
        """CREATE TABLE messages (
            seq INTEGER PRIMARY KEY,
            id BLOB NOT NULL UNIQUE,
            conversation BLOB NOT NULL,
            direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
            sender BLOB NOT NULL,
            recipient BLOB NOT NULL,
            body TEXT NOT NULL,
            ts REAL NOT NULL,
            received REAL,
            state TEXT NOT NULL,
            reply_to BLOB,
            error TEXT,
            updated REAL NOT NULL)""",
        "CREATE INDEX messages_by_conversation ON messages (conversation, seq)",
        "CREATE INDEX messages_unread ON messages (conversation, state) WHERE direction = 'in'",
        "CREATE INDEX messages_out_state ON messages (state) WHERE direction = 'out'",
        "CREATE TABLE seen (id BLOB PRIMARY KEY, until REAL NOT NULL) WITHOUT ROWID",
        "CREATE INDEX seen_until ON seen (until)",
        """CREATE TABLE pins (sender BLOB PRIMARY KEY, signer BLOB NOT NULL,
            since REAL NOT NULL)""",
        """CREATE TABLE security (id INTEGER PRIMARY KEY, key BLOB NOT NULL,
            kind TEXT NOT NULL, detail TEXT NOT NULL, ts REAL NOT NULL,
            acknowledged INTEGER NOT NULL DEFAULT 0)""",
        """CREATE VIRTUAL TABLE messages_fts USING fts5(
            body, content='messages', content_rowid='seq')""",
        """CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
            INSERT INTO messages_fts (rowid, body) VALUES (new.seq, new.body); END""",
        """CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
            INSERT INTO messages_fts (messages_fts, rowid, body)
            VALUES ('delete', old.seq, old.body); END""",
    ),
    # Security records are bounded per source address (the stream's authenticated
    # address, not the key a frame claims) and in total: see add_security.
    2: (
        "ALTER TABLE security ADD COLUMN source TEXT NOT NULL DEFAULT ''",
        "CREATE INDEX security_by_source ON security (source, id)",
    ),
}
SECURITY_PER_SOURCE = 20  # records kept per source address (its oldest pruned)
SECURITY_TOTAL = 500  # records kept in all (acknowledged first, then the oldest, pruned)

_COLUMNS = (
    "seq, id, conversation, direction, sender, recipient, body, ts, received, state, "
    "reply_to, error"
)


def message_json(row: Sequence[Any]) -> dict[str, Any]:
    seq, id_, conv, direction, sender, recipient, body, ts, received, state, reply, error = row
    return {
        "id": bytes(id_).hex(),
        "conversation": bytes(conv).hex(),
        "direction": direction,
        "from": bytes(sender).hex(),
        "to": bytes(recipient).hex(),
        "body": body,
        "ts": ts,
        "received": received,
        "state": state,
        "reply_to": bytes(reply).hex() if reply else None,
        "seq": seq,
        "error": error,
    }


PREVIEW_CHARS = 280  # a conversation's last message in a list reply


def _preview_json(row: Sequence[Any]) -> dict[str, Any]:
    message = message_json(row)
    body = message["body"]
    message["truncated"] = len(body) > PREVIEW_CHARS
    message["body"] = body[:PREVIEW_CHARS]
    return message


@dataclass(frozen=True)
class Incoming:
    """An accepted envelope to commit: ``request`` marks a new sender as a request."""

    envelope: Envelope
    received: float
    keep_until: float
    pin: bool
    request: bool
    quota: tuple[int, int] | None = None  # a stranger's (messages, bytes) until accepted


@dataclass(frozen=True)
class Stored:
    """What committing an :class:`Incoming` did."""

    duplicate: bool = False
    message: dict[str, Any] | None = None  # a new text message
    states: tuple[dict[str, Any], ...] = ()  # outgoing messages a receipt moved
    request: bool = False  # the conversation became a message request
    accepted: bool = False  # the person accepted the conversation (receipts may go)
    over_quota: bool = False  # a stranger's request is full: nothing stored, not seen


def _fts_query(text: str) -> str:
    words = [w.replace('"', '""') for w in text.split()]
    return " ".join(f'"{w}"' for w in words)


class ChatStore:
    def __init__(self, db: AppDatabase) -> None:
        self.db = db
        self._incoming: GroupCommit[Incoming, Stored] = db.group_commit(
            _commit_incoming, max_batch=256, name="chat-in"
        )

    @classmethod
    async def open(cls, path: Path) -> ChatStore:
        return cls(await AppDatabase.open(path, MIGRATIONS, what="chat.db", name="chat-writer"))

    async def close(self) -> None:
        await self.db.close()

    # -- writes ---------------------------------------------------------------------------
    @staticmethod
    def outgoing_row(
        env: Envelope, *, now: float
    ) -> Callable[[sqlite3.Connection], dict[str, Any]]:
        """The write of a message being sent, for the transaction that queues it in the
        outbox (``Outbox.put_with``: message and entry commit together); it returns the
        message as :func:`message_json` gives it."""

        def write(conn: sqlite3.Connection) -> dict[str, Any]:
            return _commit_outgoing(conn, env, now)

        return write

    async def commit_incoming(self, item: Incoming) -> Stored:
        return await self._incoming.submit(item)

    @staticmethod
    def state_row(
        ids: Sequence[bytes], state: str, error: str | None = None, *, only_from: Sequence[str]
    ) -> Callable[[sqlite3.Connection], list[dict[str, Any]]]:
        """:meth:`set_state` as a write for a transaction of its caller's (e.g. the
        outbox's removal of the delivered entries: ``core.Delivered(write=...)``)."""

        def write(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            return _move(conn, ids, state, error, only_from)

        return write

    async def set_state(
        self,
        ids: Sequence[bytes],
        state: str,
        error: str | None = None,
        *,
        only_from: Sequence[str],
    ) -> list[dict[str, Any]]:
        """Move outgoing messages to ``state`` (those now in ``only_from``); the changed."""
        return await self.db.transaction(self.state_row(ids, state, error, only_from=only_from))

    async def mark_read(self, conversation: bytes) -> list[bytes]:
        """Received messages of a conversation marked read; their ids (oldest first)."""

        def write(conn: sqlite3.Connection) -> list[bytes]:
            rows = conn.execute(
                "SELECT seq, id FROM messages WHERE conversation = ? AND direction = 'in' "
                "AND state = 'received' ORDER BY seq",
                (conversation,),
            ).fetchall()
            conn.executemany(
                "UPDATE messages SET state = 'read', updated = ? WHERE seq = ?",
                [(time.time(), seq) for seq, _ in rows],
            )
            return [bytes(id_) for _, id_ in rows]

        return await self.db.transaction(write)

    async def set_flag(self, conversation: bytes, column: str, value: bool) -> None:
        if column not in ("request", "accepted", "muted", "read_receipts"):
            raise ValueError(f"no conversation flag {column}")

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO conversations (key) VALUES (?) ON CONFLICT DO NOTHING",
                (conversation,),
            )
            conn.execute(
                f"UPDATE conversations SET {column} = ? WHERE key = ?", (int(value), conversation)
            )

        await self.db.transaction(write)

    async def add_security(
        self, key: bytes, kind: str, detail: str, source: str = ""
    ) -> dict[str, Any]:
        """Record a security event; the table stays bounded in the same transaction: at
        most :data:`SECURITY_PER_SOURCE` records per source address and
        :data:`SECURITY_TOTAL` in all (acknowledged ones go first, then the oldest)."""
        now = time.time()

        def write(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "INSERT INTO security (key, kind, detail, ts, source) VALUES (?, ?, ?, ?, ?)",
                (key, kind, detail, now, source),
            )
            conn.execute(
                "DELETE FROM security WHERE id IN (SELECT id FROM security WHERE source = ? "
                "ORDER BY id DESC LIMIT -1 OFFSET ?)",
                (source, SECURITY_PER_SOURCE),
            )
            conn.execute(
                "DELETE FROM security WHERE id IN (SELECT id FROM security "
                "ORDER BY acknowledged ASC, id DESC LIMIT -1 OFFSET ?)",
                (SECURITY_TOTAL,),
            )
            return int(cur.lastrowid or 0)

        rid = await self.db.transaction(write)
        return {
            "id": str(rid),
            "key": key.hex(),
            "kind": kind,
            "detail": detail,
            "ts": now,
            "source": source,
            "acknowledged": False,
        }

    async def ack_security(self, rid: int | None = None, *, key: bytes | None = None) -> int:
        """Acknowledge one record (``rid``), a key's records, or all of them; how many
        changed."""

        def write(conn: sqlite3.Connection) -> int:
            args: tuple[Any, ...]
            if rid is not None:
                sql, args = "UPDATE security SET acknowledged = 1 WHERE id = ?", (rid,)
            elif key is not None:
                sql = "UPDATE security SET acknowledged = 1 WHERE key = ? AND acknowledged = 0"
                args = (key,)
            else:
                sql, args = "UPDATE security SET acknowledged = 1 WHERE acknowledged = 0", ()
            return int(conn.execute(sql, args).rowcount)

        return int(await self.db.transaction(write))

    async def prune_seen(self, now: float) -> int:
        def write(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM seen WHERE until < ?", (now,)).rowcount

        return await self.db.transaction(write)

    # -- reads ----------------------------------------------------------------------------
    async def _all(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        async with self.db.conn.execute(sql, args) as cur:
            return list(await cur.fetchall())

    async def message(self, id_: bytes) -> dict[str, Any] | None:
        rows = await self._all(f"SELECT {_COLUMNS} FROM messages WHERE id = ?", (id_,))
        return message_json(rows[0]) if rows else None

    async def history(
        self, conversation: bytes, *, limit: int, before_seq: int | None = None
    ) -> tuple[list[dict[str, Any]], bool]:
        rows = await self._all(
            f"SELECT {_COLUMNS} FROM messages WHERE conversation = ? AND seq < ? "
            "ORDER BY seq DESC LIMIT ?",
            (conversation, before_seq if before_seq is not None else 2**62, limit + 1),
        )
        more = len(rows) > limit
        return [message_json(r) for r in reversed(rows[:limit])], more

    async def search(
        self,
        text: str,
        *,
        conversation: bytes | None = None,
        limit: int = 50,
        before_seq: int | None = None,
    ) -> list[dict[str, Any]]:
        query = _fts_query(text)
        if not query:
            return []
        where = "messages_fts MATCH ?"
        args: list[Any] = [query]
        if before_seq is not None:
            where += " AND messages_fts.rowid < ?"
            args.append(before_seq)
        if conversation is not None:
            where += " AND m.conversation = ?"
            args.append(conversation)
        cols = ", ".join(f"m.{c.strip()}" for c in _COLUMNS.split(","))
        rows = await self._all(
            f"SELECT {cols} FROM messages_fts JOIN messages m ON m.seq = messages_fts.rowid "
            f"WHERE {where} ORDER BY messages_fts.rowid DESC LIMIT ?",
            (*args, limit),
        )
        return [message_json(r) for r in rows]

    async def conversations(
        self, *, limit: int = 100_000, requests_only: bool = False
    ) -> list[dict[str, Any]]:
        """By last activity, newest first; each ``last`` body cut to a preview."""
        where = "WHERE c.request = 1 AND c.accepted = 0 " if requests_only else ""
        rows = await self._all(
            "SELECT c.key, c.request, c.accepted, c.muted, c.read_receipts, "
            "(SELECT COUNT(*) FROM messages u WHERE u.conversation = c.key "
            " AND u.direction = 'in' AND u.state = 'received'), "
            f"{', '.join(f'm.{c.strip()}' for c in _COLUMNS.split(','))} "
            "FROM conversations c LEFT JOIN messages m ON m.seq = c.last_seq "
            f"{where}ORDER BY c.last_activity DESC LIMIT ?",
            (limit,),
        )
        out = []
        for r in rows:
            out.append(
                {
                    "key": bytes(r[0]).hex(),
                    "request": bool(r[1]),
                    "accepted": bool(r[2]),
                    "muted": bool(r[3]),
                    "read_receipts": bool(r[4]),
                    "unread": int(r[5]),
                    "last": _preview_json(r[6:]) if r[6] is not None else None,
                }
            )
        return out

    async def stranger_bytes(self) -> int:
        """Bytes of text received in conversations not accepted (strangers' requests)."""
        rows = await self._all(
            "SELECT COALESCE(SUM(length(CAST(m.body AS BLOB))), 0) FROM conversations c "
            "JOIN messages m ON m.conversation = c.key AND m.direction = 'in' "
            "WHERE c.accepted = 0"
        )
        return int(rows[0][0])

    async def keys_starting(self, prefix: str, limit: int = 2) -> list[str]:
        """Up to ``limit`` conversation keys (hex) that start with ``prefix`` (hex)."""
        rows = await self._all(
            "SELECT lower(hex(key)) FROM conversations WHERE lower(hex(key)) LIKE ? LIMIT ?",
            (prefix.lower() + "%", limit),
        )
        return [str(r[0]) for r in rows]

    async def conversation(self, key: bytes) -> dict[str, Any] | None:
        rows = await self._all(
            "SELECT request, accepted, muted, read_receipts FROM conversations WHERE key = ?",
            (key,),
        )
        if not rows:
            return None
        r = rows[0]
        return {
            "request": bool(r[0]),
            "accepted": bool(r[1]),
            "muted": bool(r[2]),
            "read_receipts": bool(r[3]),
        }

    async def pinned(self, sender: bytes) -> bytes | None:
        rows = await self._all("SELECT signer FROM pins WHERE sender = ?", (sender,))
        return bytes(rows[0][0]) if rows else None

    async def seen(self, id_: bytes) -> bool:
        return bool(await self._all("SELECT 1 FROM seen WHERE id = ?", (id_,)))

    async def security(
        self, *, limit: int, before_id: int | None = None, unacknowledged: bool = False
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page of security records, newest first (keyset on id), and whether older
        ones remain."""
        where = "id < ?" + (" AND acknowledged = 0" if unacknowledged else "")
        rows = await self._all(
            "SELECT id, key, kind, detail, ts, acknowledged, source FROM security "
            f"WHERE {where} ORDER BY id DESC LIMIT ?",
            (before_id if before_id is not None else 2**62, limit + 1),
        )
        page = [
            {
                "id": str(r[0]),
                "key": bytes(r[1]).hex(),
                "kind": r[2],
                "detail": r[3],
                "ts": r[4],
                "acknowledged": bool(r[5]),
                "source": r[6],
            }
            for r in rows[:limit]
        ]
        return page, len(rows) > limit

    async def security_counts(self) -> tuple[int, int]:
        """(records, unacknowledged records)."""
        rows = await self._all("SELECT COUNT(*), COUNT(*) - SUM(acknowledged) FROM security")
        return int(rows[0][0] or 0), int(rows[0][1] or 0)

    async def outgoing(self, state: str) -> list[dict[str, Any]]:
        rows = await self._all(
            f"SELECT {_COLUMNS} FROM messages WHERE direction = 'out' AND state = ? ORDER BY seq",
            (state,),
        )
        return [message_json(r) for r in rows]


# -- writer-thread functions ---------------------------------------------------------------
def _insert_message(
    conn: sqlite3.Connection,
    env: Envelope,
    direction: str,
    conversation: bytes,
    received: float | None,
    state: str,
    now: float,
) -> int:
    cur = conn.execute(
        "INSERT INTO messages (id, conversation, direction, sender, recipient, body, ts, "
        "received, state, reply_to, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            env.id,
            conversation,
            direction,
            env.sender,
            env.recipient,
            env.text,
            env.sent_ms / 1000,
            received,
            state,
            env.reply_to,
            now,
        ),
    )
    return int(cur.lastrowid or 0)


def _touch(
    conn: sqlite3.Connection, key: bytes, seq: int, now: float, *, accept: bool = False
) -> None:
    conn.execute(
        "INSERT INTO conversations (key, accepted, last_seq, last_activity) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (key) DO UPDATE SET last_seq = excluded.last_seq, "
        "last_activity = excluded.last_activity, accepted = MAX(accepted, excluded.accepted)",
        (key, int(accept), seq, now),
    )


def _move(
    conn: sqlite3.Connection,
    ids: Sequence[bytes],
    state: str,
    error: str | None,
    only_from: Sequence[str],
    *,
    peer: bytes | None = None,
) -> list[dict[str, Any]]:
    """Move outgoing messages (of the conversation with ``peer`` only, when given)."""
    marks = ", ".join("?" * len(only_from))
    changed = []
    now = time.time()
    scope = " AND conversation = ?" if peer is not None else ""
    for id_ in ids:
        cur = conn.execute(
            f"UPDATE messages SET state = ?, error = ?, updated = ? WHERE id = ? "
            f"AND direction = 'out' AND state IN ({marks}){scope} RETURNING conversation",
            (state, error, now, id_, *only_from, *([peer] if peer is not None else [])),
        )
        row = cur.fetchone()
        if row is not None:
            changed.append(
                {
                    "id": id_.hex(),
                    "conversation": bytes(row[0]).hex(),
                    "state": state,
                    "error": error,
                }
            )
    return changed


def _over_quota(conn: sqlite3.Connection, item: Incoming) -> bool:
    """A stranger's text beyond its request quota (checked in the transaction that
    would store it, so pipelined envelopes cannot overshoot it)."""
    if item.quota is None or item.envelope.kind is not Kind.TEXT:
        return False
    sender = item.envelope.sender
    row = conn.execute("SELECT accepted FROM conversations WHERE key = ?", (sender,)).fetchone()
    if row is not None and row[0]:
        return False
    count, size = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(length(CAST(body AS BLOB))), 0) FROM messages "
        "WHERE conversation = ? AND direction = 'in'",
        (sender,),
    ).fetchone()
    messages, limit = item.quota
    return bool(count >= messages or size + len(item.envelope.body) > limit)


def _commit_one(conn: sqlite3.Connection, item: Incoming) -> Stored:
    env = item.envelope
    if _over_quota(conn, item):
        return Stored(over_quota=True)
    cur = conn.execute(
        "INSERT INTO seen (id, until) VALUES (?, ?) ON CONFLICT DO NOTHING",
        (env.id, item.keep_until),
    )
    if cur.rowcount == 0:
        return Stored(duplicate=True)
    if item.pin:
        conn.execute(
            "INSERT INTO pins (sender, signer, since) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (env.sender, env.signer, item.received),
        )
    # A receipt from X moves only messages that were sent to X (a stranger naming the id
    # of a message sent to someone else moves nothing).
    if env.kind is Kind.RECEIPT:
        moved = _move(conn, env.ids, "delivered", None, _DELIVERED_FROM, peer=env.sender)
        return Stored(states=tuple(moved))
    if env.kind is Kind.READ:
        return Stored(states=tuple(_move(conn, env.ids, "read", None, _READ_FROM, peer=env.sender)))
    seq = _insert_message(conn, env, "in", env.sender, item.received, "received", item.received)
    existing = conn.execute("SELECT 1 FROM conversations WHERE key = ?", (env.sender,)).fetchone()
    _touch(conn, env.sender, seq, item.received, accept=not item.request)  # a contact's
    request = existing is None and item.request
    if request:
        conn.execute("UPDATE conversations SET request = 1 WHERE key = ?", (env.sender,))
    row = conn.execute(f"SELECT {_COLUMNS} FROM messages WHERE seq = ?", (seq,)).fetchone()
    accepted = conn.execute(
        "SELECT accepted FROM conversations WHERE key = ?", (env.sender,)
    ).fetchone()
    return Stored(message=message_json(row), request=request, accepted=bool(accepted[0]))


def _commit_outgoing(conn: sqlite3.Connection, env: Envelope, now: float) -> dict[str, Any]:
    seq = _insert_message(conn, env, "out", env.recipient, None, "pending", now)
    _touch(conn, env.recipient, seq, now, accept=True)
    row = conn.execute(f"SELECT {_COLUMNS} FROM messages WHERE seq = ?", (seq,)).fetchone()
    return message_json(row)


def _commit_incoming(
    conn: sqlite3.Connection, items: list[Incoming]
) -> list[Stored | BaseException]:
    out: list[Stored | BaseException] = []
    for item in items:
        conn.execute("SAVEPOINT one")
        try:
            out.append(_commit_one(conn, item))
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK TO one")
            out.append(exc)
        conn.execute("RELEASE one")
    return out
