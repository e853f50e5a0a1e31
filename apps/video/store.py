"""The call log: one row per call (direction, peer, result, times) in ``calls.db``.

The schema is versioned (:data:`MIGRATIONS`), so it moves onto the kit's
``AppDatabase.open(path, MIGRATIONS, what=...)`` unchanged once that is available.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiosqlite

from core.errors import MeshError

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
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: Path) -> CallLog:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            async with db.execute("PRAGMA user_version") as cur:
                row = await cur.fetchone()
            version = int(row[0]) if row else 0
            if version > max(MIGRATIONS):
                raise MeshError(f"{path} is from a newer meshsuite (schema {version})")
            for step in range(version + 1, max(MIGRATIONS) + 1):
                await db.execute("BEGIN IMMEDIATE")
                for statement in MIGRATIONS[step]:
                    await db.execute(statement)
                await db.execute(f"PRAGMA user_version={step}")
                await db.commit()
        except BaseException:
            await db.close()
            raise
        return cls(db)

    async def close(self) -> None:
        await self._db.close()

    async def add(self, summary: dict[str, Any]) -> None:
        """Record a finished call (its summary as :meth:`Call.finish` made it)."""
        values = [summary.get(c) for c in _COLUMNS]
        values[4] = ",".join(summary.get("media", []))
        await self._db.execute(
            "INSERT OR REPLACE INTO calls (id, direction, peer, name, media, started, "
            "answered, ended, duration_s, result, detail, summary) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                *values,
                float(summary.get("duration_s") or 0.0),
                str(summary.get("result") or "failed"),
                str(summary.get("detail") or ""),
                json.dumps(summary, default=str),
            ),
        )
        await self._db.execute(
            "DELETE FROM calls WHERE seq <= (SELECT MAX(seq) FROM calls) - ?", (MAX_ROWS,)
        )
        await self._db.commit()

    async def recent(self, limit: int = 50, peer: bytes | None = None) -> list[dict[str, Any]]:
        """The newest calls first."""
        if not 1 <= limit <= 1000:
            raise MeshError("call log limit must be between 1 and 1000")
        query = (
            "SELECT seq, id, direction, peer, name, media, started, answered, ended, "
            "duration_s, result, detail FROM calls"
        )
        args: tuple[Any, ...] = ()
        if peer is not None:
            query += " WHERE peer = ?"
            args = (peer.hex(),)
        query += " ORDER BY seq DESC LIMIT ?"
        async with self._db.execute(query, (*args, limit)) as cur:
            rows = await cur.fetchall()
        keys = ("seq", *_COLUMNS, "duration_s", "result", "detail")
        out = []
        for row in rows:
            item = dict(zip(keys, row, strict=True))
            item["media"] = [m for m in str(item["media"]).split(",") if m]
            item["outcome"] = OUTCOMES.get(str(item["result"]), "failed")
            out.append(item)
        return out
