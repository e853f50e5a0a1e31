"""A whole write transaction in one hop to a database thread.

aiosqlite runs each statement as its own round trip to its thread: a transaction of nine
statements is nine hand-offs between the event loop and that thread, and under load each
hand-off waits for the loop to come round. :class:`TransactionThread` owns one more
``sqlite3`` connection to the same file on one thread of its own and runs a whole
transaction there (``BEGIN IMMEDIATE`` … ``COMMIT``, or ``ROLLBACK`` on any exception)
as a single hand-off.

Callers keep all writes to the file serialised by the owner's ``asyncio.Lock`` (the
same lock its aiosqlite connection's writes take), so the two connections never contend;
SQLite's own locking (``busy_timeout``) would still keep them correct if they did. The
connection uses the same pragmas as the owner's (WAL, ``synchronous=FULL``, foreign
keys), so a commit here is as durable as one there: ``COMMIT`` returns after the WAL is
fsync'd.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

__all__ = ["TransactionThread"]

T = TypeVar("T")

PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",
)


class TransactionThread:
    """``await TransactionThread.open(path)``; ``await run(fn)``; ``await close()``."""

    def __init__(self, executor: ThreadPoolExecutor, conn: sqlite3.Connection) -> None:
        self._executor = executor
        self._conn = conn
        self._closed = False

    @classmethod
    async def open(cls, path: Path, *, name: str) -> TransactionThread:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

        def connect() -> sqlite3.Connection:
            # Made on the thread that will use it; only that thread ever touches it.
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            try:
                for pragma in PRAGMAS:
                    conn.execute(pragma)
            except BaseException:
                conn.close()
                raise
            return conn

        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(executor, connect)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(executor, conn)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(connection)`` inside one transaction; its result once committed."""

        def transaction() -> T:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return result

        # Not cancellable half way: the thread finishes the transaction either way, and
        # the caller's lock must stay held until it has.
        return await asyncio.shield(
            asyncio.get_running_loop().run_in_executor(self._executor, transaction)
        )

    async def close(self) -> None:
        """Close the connection and end the thread; closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._conn.close)
        self._executor.shutdown(wait=True)
