"""Versioned schema migrations for the mail databases (the store and the outbox).

Each database keeps one row in ``schema_version``; every migration runs in its own
``BEGIN IMMEDIATE`` transaction together with the version bump, so a crash leaves the
database at one version or the next, never between.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import aiosqlite

from core.errors import MeshError

__all__ = ["run_migrations"]

log = logging.getLogger(__name__)


async def run_migrations(
    db: aiosqlite.Connection, migrations: Mapping[int, Sequence[str]], what: str
) -> int:
    """Bring ``db`` to the highest version in ``migrations``; returns the version found.

    ``what`` names the database in messages ("the mail store", "outbox.db").
    """
    target = max(migrations)
    await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    async with db.execute("SELECT version FROM schema_version") as cur:
        row = await cur.fetchone()
    found = int(row[0]) if row else 0
    if found > target:
        raise MeshError(
            f"{what} has schema version {found}, newer than this meshsuite understands "
            f"({target}); upgrade meshsuite or use the matching release"
        )
    for version in range(found + 1, target + 1):
        await db.execute("BEGIN IMMEDIATE")
        try:
            for statement in migrations[version]:
                await db.execute(statement)
            await db.execute("DELETE FROM schema_version")
            await db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        log.info("%s migrated to schema version %d", what, version)
    return found
