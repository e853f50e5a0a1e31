"""The call log: one row per call (direction, peer, result, times) in ``calls.db``, on
the kit's :class:`AppDatabase` (versioned schema :data:`MIGRATIONS`)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from core import AppDatabase, UsageError

__all__ = ["LOG_FILE_NAME", "MIGRATIONS", "OUTCOMES", "CallLog"]

LOG_FILE_NAME = "calls.db"
MAX_ROWS = 10_000  # the oldest rows go beyond this

MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE calls (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            direction TEXT NOT NULL CHECK (direction IN ('incoming', 'outgoing')),
            peer TEXT NOT NULL,
            name TEXT NOT NULL DEFAULT '',
            media TEXT NOT NULL,
            started REAL NOT NULL,
            answered REAL,
            ended REAL,
            duration_s REAL NOT NULL DEFAULT 0,
            result TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT '',
            summary TEXT NOT NULL DEFAULT '{}'
        )""",
        "CREATE INDEX calls_peer ON calls (peer, seq)",
    ),
}

#: The four outcomes of the log (for incoming and outgoing: answered, missed, rejected,
#: failed) from the finer results.
OUTCOMES = {
    "answered": "answered",
    "missed": "missed",
    "no-answer": "missed",
    "rejected": "rejected",
    "busy": "rejected",
    "not-a-contact": "rejected",
    "failed": "failed",
}

_COLUMNS = ("id", "direction", "peer", "name", "media", "started", "answered", "ended")


class CallLog:
    def __init__(self, db: AppDatabase) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: Path) -> CallLog:
        return cls(await AppDatabase.open(path, MIGRATIONS, what="the call log", name="calls"))

    async def close(self) -> None:
        await self._db.close()

    async def add(self, summary: dict[str, Any]) -> None:
        """Record a finished call (its summary as :meth:`Call.finish` made it); durable
        when this returns."""
        values = [summary.get(c) for c in _COLUMNS]
        values[4] = ",".join(summary.get("media", []))
        row = (
            *values,
            float(summary.get("duration_s") or 0.0),
            str(summary.get("result") or "failed"),
            str(summary.get("detail") or ""),
            json.dumps(summary, default=str),
        )

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO calls (id, direction, peer, name, media, started, "
                "answered, ended, duration_s, result, detail, summary) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            conn.execute(
                "DELETE FROM calls WHERE seq <= (SELECT MAX(seq) FROM calls) - ?", (MAX_ROWS,)
            )

        await self._db.transaction(write)

    async def recent(self, limit: int = 50, peer: bytes | None = None) -> list[dict[str, Any]]:
        """The newest calls first."""
        if not 1 <= limit <= 1000:
            raise UsageError("call log limit must be between 1 and 1000")
        query = (
            "SELECT seq, id, direction, peer, name, media, started, answered, ended, "
            "duration_s, result, detail FROM calls"
        )
        args: tuple[Any, ...] = ()
        if peer is not None:
            query += " WHERE peer = ?"
            args = (peer.hex(),)
        query += " ORDER BY seq DESC LIMIT ?"
        async with self._db.conn.execute(query, (*args, limit)) as cur:
            rows = await cur.fetchall()
        keys = ("seq", *_COLUMNS, "duration_s", "result", "detail")
        out = []
        for row in rows:
            item = dict(zip(keys, row, strict=True))
            item["media"] = [m for m in str(item["media"]).split(",") if m]
            item["outcome"] = OUTCOMES.get(str(item["result"]), "failed")
            out.append(item)
        return out
