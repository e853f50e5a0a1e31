"""An app's SQLite database: one helper for every app (mail, chat, calls).

:class:`AppDatabase` opens one file with

* the pragmas in exactly one place (:data:`PRAGMAS`: WAL, ``synchronous=FULL`` — in WAL
  mode ``NORMAL`` may lose the last commits on power loss, and apps acknowledge writes
  to people and peers right after ``COMMIT`` — foreign keys, a busy timeout);
* versioned migrations (:func:`run_migrations`: one ``schema_version`` row; each step in
  its own ``BEGIN IMMEDIATE`` transaction together with the version bump, so a crash
  leaves the file at one version or the next; a file from a newer release is refused);
* ``conn``: an aiosqlite connection for reads and small writes, serialised by ``lock``;
* a writer thread (:meth:`AppDatabase.transaction`): aiosqlite runs each statement as its
  own round trip to its thread, so a transaction of nine statements is nine hand-offs
  between the loop and that thread, each waiting for the loop under load. The writer
  thread owns a second ``sqlite3`` connection to the same file and runs a whole
  transaction (``BEGIN IMMEDIATE`` … ``COMMIT``, ``ROLLBACK`` on any exception) as one
  hand-off;
* group commit (:meth:`AppDatabase.group_commit`, :mod:`core.groupcommit`): concurrent
  writers share one such transaction and one fsync, each answered after its commit.

Every write — on ``conn`` or on the writer thread — holds ``lock``, so the two
connections never contend (``busy_timeout`` would still keep them correct if they did),
and a read under ``lock`` never sees another coroutine's open transaction on ``conn``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from core.errors import MeshError
from core.groupcommit import GroupCommit

__all__ = ["PRAGMAS", "AppDatabase", "run_migrations"]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",
)

# How long close() waits for each stage (writers to finish, a connection to close) before
# it abandons what is stuck.
CLOSE_GRACE = 5.0

Migrations = Mapping[int, Sequence[str]]
RowsFn = Callable[[sqlite3.Connection, list[T]], Sequence[R | BaseException]]


async def run_migrations(db: aiosqlite.Connection, migrations: Migrations, what: str) -> int:
    """Bring ``db`` to the highest version in ``migrations``; returns the version found.

    ``what`` names the database in messages ("the mail store", "outbox.db").
    """
    if not migrations or min(migrations) < 1:
        raise ValueError(f"{what}: migrations are numbered from 1")
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


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        for pragma in PRAGMAS:
            conn.execute(pragma)
    except BaseException:
        conn.close()
        raise
    return conn


def _run_transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


class AppDatabase:
    """``db = await AppDatabase.open(path, migrations, what=...)``; ``await db.close()``."""

    def __init__(
        self,
        path: Path,
        what: str,
        conn: aiosqlite.Connection,
        executor: ThreadPoolExecutor,
        writer: sqlite3.Connection,
        found_version: int,
        version: int,
    ) -> None:
        self.path = path
        self.what = what
        self.conn = conn  # reads, and small writes under ``lock``
        self.lock = asyncio.Lock()  # held by every write, on either connection
        self.found_version = found_version  # the schema version before this open
        self.version = version
        self._executor = executor
        self._writer = writer  # touched only on the executor's one thread
        self._group_commits: list[GroupCommit[Any, Any]] = []
        self._closing = False
        self._closed = False

    @classmethod
    async def open(
        cls, path: Path, migrations: Migrations, *, what: str, name: str | None = None
    ) -> AppDatabase:
        """Open (creating it 0600, its directory 0700) and migrate ``path``.

        ``what`` names the database in errors and logs; ``name`` the writer thread.
        """
        path = Path(path)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Private data: owner-only. SQLite gives the -wal and -shm files the same mode.
        try:
            os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        except OSError as exc:
            raise MeshError(f"cannot open {what} at {path}: {exc.strerror}") from None
        conn = aiosqlite.connect(path, isolation_level=None)
        # Its worker thread must never keep the interpreter from exiting (a database a
        # crashed caller never closed): SQLite's journal makes an abandoned write safe.
        conn._thread.daemon = True
        await conn
        try:
            for pragma in PRAGMAS:
                await conn.execute(pragma)
            found = await run_migrations(conn, migrations, what)
        except BaseException:
            await conn.close()
            raise
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name or path.stem)
        loop = asyncio.get_running_loop()
        try:
            # Made on the thread that will use it; only that thread ever touches it.
            writer = await loop.run_in_executor(executor, _connect, path)
        except BaseException:
            executor.shutdown(wait=False)
            await conn.close()
            raise
        return cls(path, what, conn, executor, writer, found, max(migrations))

    # -- writes ---------------------------------------------------------------------------
    async def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(connection)`` whole in one transaction on the writer thread.

        Returns ``fn``'s result once committed (durable); an exception from ``fn`` rolls
        the transaction back and is raised here. Takes ``lock``.
        """
        async with self.lock:
            return await self.transaction_locked(fn)

    async def transaction_locked(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """:meth:`transaction` for a caller that already holds ``lock``."""
        if self._closed:
            raise MeshError(f"{self.what} is closed")
        work = asyncio.wrap_future(self._executor.submit(_run_transaction, self._writer, fn))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            # Not cancellable half way: the thread finishes the transaction either way,
            # and the caller's lock must stay held until it has.
            with contextlib.suppress(Exception):
                await work
            raise

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """One write statement on ``conn`` (its own transaction); rows changed."""
        async with self.lock:
            cursor = await self.conn.execute(sql, args)
            return cursor.rowcount

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[aiosqlite.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` on ``conn`` (``ROLLBACK`` on any exception).

        The caller holds ``lock`` (``async with db.lock, db.begin() as conn:``).
        """
        await self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            await self.conn.execute("ROLLBACK")
            raise
        await self.conn.execute("COMMIT")

    def group_commit(self, rows: RowsFn[T, R], *, max_batch: int, name: str) -> GroupCommit[T, R]:
        """Concurrent ``submit(item)`` calls share one :meth:`transaction`.

        ``rows(connection, items)`` runs inside it and returns one result per item, in
        order: a value, or an exception refusing that item alone. Each caller is answered
        after the commit holding its item. Closed (drained) by :meth:`close`.
        """

        async def commit(items: list[T]) -> Sequence[R | BaseException]:
            return await self.transaction(lambda conn: rows(conn, items))

        gc: GroupCommit[T, R] = GroupCommit(commit, max_batch=max_batch, name=name)
        self._group_commits.append(gc)
        return gc

    async def close(self) -> None:
        """Drain the group commits, then close both connections; again does nothing.

        Bounded: what cannot finish within :data:`CLOSE_GRACE` (a writer that never
        returns the lock, a statement stuck in SQLite) is abandoned with an error logged
        and the connections are closed anyway. Nothing is lost by that: every write is
        acknowledged only after its ``COMMIT``, and an uncommitted transaction is rolled
        back by SQLite at the next open.
        """
        if self._closing:
            return
        self._closing = True  # a second close returns at once
        locked = False
        try:
            async with asyncio.timeout(CLOSE_GRACE):
                for gc in self._group_commits:
                    await gc.close()
                await self.lock.acquire()
                locked = True
        except TimeoutError:
            log.error("%s: writers still busy %.0f s into close; closing anyway", self.what,
                      CLOSE_GRACE)  # fmt: skip
        self._closed = True  # no new transaction from here
        try:
            await self._close_connections()
        finally:
            if locked:
                self.lock.release()

    async def _close_connections(self) -> None:
        loop = asyncio.get_running_loop()
        writer_closed = False
        try:
            async with asyncio.timeout(CLOSE_GRACE):
                await asyncio.shield(loop.run_in_executor(self._executor, self._writer.close))
                writer_closed = True
        except TimeoutError:
            log.error("%s: the writer thread is stuck; abandoned", self.what)
        finally:
            # Never blocks the loop: the thread (idle once the writer closed) exits alone.
            self._executor.shutdown(wait=False, cancel_futures=not writer_closed)
            try:
                async with asyncio.timeout(CLOSE_GRACE):
                    await self.conn.close()
            except TimeoutError:
                log.error("%s: the reader thread is stuck; abandoned", self.what)
                self.conn.stop()  # its thread ends after whatever it is running
