"""``relay.db``: what this node holds as a relay, and which relays it and its contacts use.

Relay side: ``allowed`` (people the owner lets enroll), ``enrolled`` (who enrolled), and
``held`` (sealed items: recipient, submitting node, item id, size, times, blob). An item
is stored (committed, ``synchronous=FULL``) before the relay answers OK, once per
(recipient, item id): a re-submitted copy is answered OK and stored nothing.

Client side: ``using`` (our relays: state enrolled / pending / refused / leaving, the
reason, the last fetch) and ``contact_relays`` (each contact's last signed announcement).
"""

from __future__ import annotations

import enum
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from core.db import AppDatabase
from core.relay.config import RelayConfig
from core.relay.sealing import KEY
from core.relay.wire import Code, Item

__all__ = ["DB_FILE", "Held", "RelayStore", "UseState", "Using"]

DB_FILE = "relay.db"

MIGRATIONS: Mapping[int, tuple[str, ...]] = {
    1: (
        "CREATE TABLE allowed (key BLOB PRIMARY KEY, added REAL NOT NULL)",
        "CREATE TABLE enrolled (key BLOB PRIMARY KEY, since REAL NOT NULL)",
        """CREATE TABLE held (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            recipient BLOB NOT NULL,
            submitter BLOB NOT NULL,
            item_id BLOB NOT NULL,
            size INTEGER NOT NULL,
            submitted REAL NOT NULL,
            expires REAL NOT NULL,
            blob BLOB NOT NULL,
            UNIQUE (recipient, item_id)
        )""",
        "CREATE INDEX held_submitter ON held (submitter)",
        "CREATE INDEX held_expires ON held (expires)",
        """CREATE TABLE relays_used (
            relay BLOB PRIMARY KEY,
            state TEXT NOT NULL CHECK (state IN ('enrolled', 'pending', 'refused', 'leaving')),
            reason TEXT NOT NULL DEFAULT '',
            since REAL NOT NULL,
            last_fetch REAL
        )""",
        """CREATE TABLE contact_relays (
            contact BLOB PRIMARY KEY,
            time_ms INTEGER NOT NULL,
            relays BLOB NOT NULL,
            record BLOB NOT NULL
        )""",
        "CREATE TABLE own_record (id INTEGER PRIMARY KEY CHECK (id = 1), time_ms INTEGER)",
    ),
}


class UseState(enum.StrEnum):
    ENROLLED = "enrolled"
    PENDING = "pending"
    REFUSED = "refused"
    LEAVING = "leaving"  # dropped here; the relay is still to be told


@dataclass(frozen=True, slots=True)
class Using:
    relay: bytes
    state: UseState
    reason: str
    since: float
    last_fetch: float | None


@dataclass(frozen=True, slots=True)
class Held:
    key: bytes
    held: int
    bytes: int


class RelayStore:
    def __init__(self, db: AppDatabase, config: RelayConfig) -> None:
        self.db = db
        self.config = config

    @classmethod
    async def open(cls, path: Path, config: RelayConfig) -> RelayStore:
        db = await AppDatabase.open(path, MIGRATIONS, what="the relay store", name="relay-db")
        return cls(db, config)

    async def close(self) -> None:
        await self.db.close()

    async def _rows(self, sql: str, args: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        async with self.db.lock:
            return list(await self.db.conn.execute_fetchall(sql, args))

    # -- relay side: who may enroll ---------------------------------------------------------
    async def allow(self, key: bytes, now: float) -> bool:
        """Let ``key`` enroll; whether it was new."""
        return (
            await self.db.execute(
                "INSERT OR IGNORE INTO allowed (key, added) VALUES (?, ?)", (key, now)
            )
            > 0
        )

    async def deny(self, key: bytes) -> bool:
        """Withdraw ``key``'s permission and enrollment (what is held stays); whether it had
        either."""

        def write(conn: sqlite3.Connection) -> int:
            a = conn.execute("DELETE FROM allowed WHERE key = ?", (key,)).rowcount
            e = conn.execute("DELETE FROM enrolled WHERE key = ?", (key,)).rowcount
            return int(a + e)

        return await self.db.transaction(write) > 0

    async def is_allowed(self, key: bytes) -> bool:
        return bool(await self._rows("SELECT 1 FROM allowed WHERE key = ?", (key,)))

    async def is_enrolled(self, key: bytes) -> bool:
        return bool(await self._rows("SELECT 1 FROM enrolled WHERE key = ?", (key,)))

    async def enroll(self, key: bytes, now: float) -> Code:
        """Enroll ``key`` if allowed: OK or NOT_ALLOWED."""

        def write(conn: sqlite3.Connection) -> Code:
            if conn.execute("SELECT 1 FROM allowed WHERE key = ?", (key,)).fetchone() is None:
                return Code.NOT_ALLOWED
            conn.execute("INSERT OR IGNORE INTO enrolled (key, since) VALUES (?, ?)", (key, now))
            return Code.OK

        return await self.db.transaction(write)

    async def leave(self, key: bytes) -> None:
        await self.db.execute("DELETE FROM enrolled WHERE key = ?", (key,))

    # -- relay side: holding ----------------------------------------------------------------
    async def hold(
        self, recipient: bytes, submitter: bytes, item_id: bytes, blob: bytes, now: float
    ) -> tuple[Code, str]:
        """Store one item (committed before this returns) or say why not."""
        cfg = self.config
        size = len(blob)
        if size > cfg.max_item_bytes:
            return Code.TOO_LARGE, f"an item is at most {cfg.max_item_bytes} bytes here"

        def write(conn: sqlite3.Connection) -> tuple[Code, str]:
            if (
                conn.execute("SELECT 1 FROM enrolled WHERE key = ?", (recipient,)).fetchone()
                is None
            ):
                return Code.NOT_ENROLLED, "the recipient does not use this relay"
            if conn.execute(
                "SELECT 1 FROM held WHERE recipient = ? AND item_id = ?", (recipient, item_id)
            ).fetchone():
                return Code.OK, "already held"
            r_items, r_bytes = conn.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM held WHERE recipient = ?",
                (recipient,),
            ).fetchone()
            if r_items + 1 > cfg.recipient_max_items or r_bytes + size > cfg.recipient_max_bytes:
                return Code.RECIPIENT_FULL, (
                    f"the recipient's share is full ({r_items} items, {r_bytes} bytes held)"
                )
            s_items, s_bytes = conn.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM held WHERE submitter = ?",
                (submitter,),
            ).fetchone()
            if s_items + 1 > cfg.submitter_max_items or s_bytes + size > cfg.submitter_max_bytes:
                return Code.SUBMITTER_FULL, (
                    f"your share is full ({s_items} items, {s_bytes} bytes held from you)"
                )
            (total,) = conn.execute("SELECT coalesce(sum(size), 0) FROM held").fetchone()
            if total + size > cfg.total_max_bytes:
                return Code.RELAY_FULL, "the relay is full"
            conn.execute(
                "INSERT INTO held (recipient, submitter, item_id, size, submitted, expires, "
                "blob) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (recipient, submitter, item_id, size, now, now + cfg.expiry, blob),
            )
            return Code.OK, ""

        return await self.db.transaction(write)

    async def take(
        self, recipient: bytes, max_items: int, max_bytes: int, now: float
    ) -> tuple[list[Item], int]:
        """Up to ``max_items`` (at least one, whatever its size) of ``recipient``'s items
        in submission order, within ``max_bytes``; and how many are held in all."""
        rows = await self._rows(
            "SELECT item_id, submitted, blob, size FROM held WHERE recipient = ? AND "
            "expires > ? ORDER BY seq LIMIT ?",
            (recipient, now, max(1, max_items)),
        )
        items: list[Item] = []
        total = 0
        for item_id, submitted, blob, size in rows:
            if items and total + size > max_bytes:
                break
            items.append(Item(bytes(item_id), int(submitted * 1000), bytes(blob)))
            total += size
        (count,) = (
            await self._rows(
                "SELECT count(*) FROM held WHERE recipient = ? AND expires > ?", (recipient, now)
            )
        )[0]
        return items, int(count)

    async def delete(self, recipient: bytes, item_ids: tuple[bytes, ...]) -> int:
        def write(conn: sqlite3.Connection) -> int:
            return sum(
                conn.execute(
                    "DELETE FROM held WHERE recipient = ? AND item_id = ?", (recipient, i)
                ).rowcount
                for i in item_ids
            )

        return await self.db.transaction(write)

    async def expire(self, now: float) -> int:
        return await self.db.execute("DELETE FROM held WHERE expires <= ?", (now,))

    async def serving(self) -> list[Held]:
        """Everyone allowed, enrolled or with items held: what is held for them."""
        rows = await self._rows(
            "SELECT k.key, count(h.seq), coalesce(sum(h.size), 0) FROM "
            "(SELECT key FROM allowed UNION SELECT key FROM enrolled "
            "UNION SELECT DISTINCT recipient FROM held) k "
            "LEFT JOIN held h ON h.recipient = k.key GROUP BY k.key ORDER BY k.key"
        )
        return [Held(bytes(k), int(n), int(b)) for k, n, b in rows]

    # -- client side: our relays ---------------------------------------------------------
    async def set_using(self, relay: bytes, state: UseState, reason: str, now: float) -> None:
        await self.db.execute(
            "INSERT INTO relays_used (relay, state, reason, since) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (relay) DO UPDATE SET state = excluded.state, "
            "reason = excluded.reason, since = excluded.since",
            (relay, state.value, reason, now),
        )

    async def forget_using(self, relay: bytes) -> None:
        await self.db.execute("DELETE FROM relays_used WHERE relay = ?", (relay,))

    async def fetched(self, relay: bytes, now: float) -> None:
        await self.db.execute("UPDATE relays_used SET last_fetch = ? WHERE relay = ?", (now, relay))

    async def using(self) -> list[Using]:
        rows = await self._rows(
            "SELECT relay, state, reason, since, last_fetch FROM relays_used ORDER BY since, relay"
        )
        return [
            Using(bytes(r), UseState(s), str(why), float(t), None if f is None else float(f))
            for r, s, why, t, f in rows
        ]

    async def next_record_time(self, now_ms: int) -> int:
        """A time for our next announcement, later than every one before it."""

        def write(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT time_ms FROM own_record WHERE id = 1").fetchone()
            stamp = max(now_ms, (row[0] + 1) if row and row[0] is not None else 0)
            conn.execute("INSERT OR REPLACE INTO own_record (id, time_ms) VALUES (1, ?)", (stamp,))
            return stamp

        return await self.db.transaction(write)

    # -- client side: our contacts' relays ---------------------------------------------------
    async def keep_announcement(
        self, contact: bytes, time_ms: int, relays: tuple[bytes, ...], record: bytes
    ) -> bool:
        """Keep a contact's announcement if newer than the one kept; whether it was."""

        def write(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT time_ms FROM contact_relays WHERE contact = ?", (contact,)
            ).fetchone()
            if row is not None and row[0] >= time_ms:
                return False
            conn.execute(
                "INSERT OR REPLACE INTO contact_relays (contact, time_ms, relays, record) "
                "VALUES (?, ?, ?, ?)",
                (contact, time_ms, b"".join(relays), record),
            )
            return True

        return await self.db.transaction(write)

    async def contact_relays(self, contact: bytes | None = None) -> dict[bytes, list[bytes]]:
        where, args = ("WHERE contact = ?", (contact,)) if contact is not None else ("", ())
        rows = await self._rows(f"SELECT contact, relays FROM contact_relays {where}", args)
        return {bytes(c): [bytes(r[i : i + KEY]) for i in range(0, len(r), KEY)] for c, r in rows}
