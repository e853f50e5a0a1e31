"""Versioned schema migrations of the mail store (SQLite).

Each migration is a list of statements run in one transaction together with the bump of
``schema_version``; a store opened by an older release is brought forward step by step and
a store written by a *newer* release is refused rather than damaged.
"""

from __future__ import annotations

import logging

import aiosqlite

from core.errors import MeshError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate"]

log = logging.getLogger(__name__)

MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE mailboxes (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            special_use TEXT,
            subscribed INTEGER NOT NULL DEFAULT 1,
            uidvalidity INTEGER NOT NULL UNIQUE,
            uidnext INTEGER NOT NULL DEFAULT 1,
            modseq INTEGER NOT NULL DEFAULT 1,
            recent_uid INTEGER NOT NULL DEFAULT 0
        )""",
        # Every UIDVALIDITY ever handed out, so that a deleted and re-created mailbox can
        # never present an old value again (RFC 3501 section 2.3.1.1).
        "CREATE TABLE used_uidvalidity (value INTEGER PRIMARY KEY)",
        """CREATE TABLE bodies (
            id INTEGER PRIMARY KEY,
            raw BLOB NOT NULL,
            size INTEGER NOT NULL,
            header_size INTEGER NOT NULL,
            envelope BLOB NOT NULL,
            bodystructure BLOB NOT NULL,
            sent_date REAL
        )""",
        """CREATE TABLE messages (
            mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
            uid INTEGER NOT NULL,
            body_id INTEGER NOT NULL REFERENCES bodies(id),
            flags TEXT NOT NULL DEFAULT '',
            internal_date REAL NOT NULL,
            internal_tz INTEGER NOT NULL,
            modseq INTEGER NOT NULL,
            PRIMARY KEY (mailbox_id, uid)
        ) WITHOUT ROWID""",
        "CREATE INDEX messages_body ON messages(body_id)",
        """CREATE TABLE dedup (
            key TEXT PRIMARY KEY,
            mailbox_id INTEGER NOT NULL,
            uid INTEGER NOT NULL,
            created REAL NOT NULL
        )""",
        "CREATE INDEX dedup_created ON dedup(created)",
    ),
}
SCHEMA_VERSION = max(MIGRATIONS)


async def migrate(db: aiosqlite.Connection) -> int:
    """Bring the database to :data:`SCHEMA_VERSION`; returns the version found before."""
    await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    async with db.execute("SELECT version FROM schema_version") as cur:
        row = await cur.fetchone()
    found = int(row[0]) if row else 0
    if found > SCHEMA_VERSION:
        raise MeshError(
            f"the mail store has schema version {found}, newer than this meshsuite "
            f"understands ({SCHEMA_VERSION}); upgrade meshsuite or use the matching release"
        )
    for version in range(found + 1, SCHEMA_VERSION + 1):
        await db.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[version]:
                await db.execute(statement)
            await db.execute("DELETE FROM schema_version")
            await db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        log.info("mail store migrated to schema version %d", version)
    return found
