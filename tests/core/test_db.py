"""The app database: one set of pragmas on both connections, versioned migrations,
whole transactions on the writer thread, group commit answered only after its commit."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest

from core import AppDatabase, MeshError

V1 = {1: ("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",)}
V2 = {**V1, 2: ("ALTER TABLE items ADD COLUMN size INTEGER NOT NULL DEFAULT 0",)}


def _committed(path: Path) -> list[str]:
    """What another connection sees: only committed rows."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [str(r[0]) for r in db.execute("SELECT name FROM items ORDER BY id")]
    finally:
        db.close()


async def test_both_connections_use_wal_full_sync_and_foreign_keys(tmp_path: Path) -> None:
    db = await AppDatabase.open(tmp_path / "sub" / "app.db", V1, what="app.db")
    try:
        async with db.conn.execute("PRAGMA journal_mode") as cur:
            assert (await cur.fetchone()) == ("wal",)
        reader = [
            (await (await db.conn.execute(f"PRAGMA {p}")).fetchone())[0]  # type: ignore[index]
            for p in ("synchronous", "foreign_keys", "busy_timeout")
        ]

        def writer_pragmas(conn: sqlite3.Connection) -> list[int]:
            return [conn.execute(f"PRAGMA {p}").fetchone()[0]
                    for p in ("synchronous", "foreign_keys", "busy_timeout")]  # fmt: skip

        assert reader == await db.transaction(writer_pragmas) == [2, 1, 5000]  # 2 = FULL
        assert stat.S_IMODE((tmp_path / "sub" / "app.db").stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "sub").stat().st_mode) == 0o700
    finally:
        await db.close()


async def test_migrations_run_once_in_order_and_a_newer_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    db = await AppDatabase.open(path, V1, what="app.db")
    assert (db.found_version, db.version) == (0, 1)
    await db.execute("INSERT INTO items (name) VALUES ('a')")
    await db.close()
    db = await AppDatabase.open(path, V2, what="app.db")
    try:
        assert (db.found_version, db.version) == (1, 2)
        async with db.conn.execute("SELECT name, size FROM items") as cur:
            assert list(await cur.fetchall()) == [("a", 0)]  # data kept, column added
    finally:
        await db.close()
    with pytest.raises(MeshError, match=r"app.db has schema version 2, newer than"):
        await AppDatabase.open(path, V1, what="app.db")


async def test_a_failing_migration_leaves_the_previous_version(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    await (await AppDatabase.open(path, V1, what="app.db")).close()
    broken = {**V1, 2: ("CREATE TABLE extra (x)", "THIS IS NOT SQL")}
    with pytest.raises(sqlite3.OperationalError):
        await AppDatabase.open(path, broken, what="app.db")
    db = await AppDatabase.open(path, V2, what="app.db")
    try:
        assert db.found_version == 1
        async with db.conn.execute("SELECT name FROM sqlite_master WHERE name = 'extra'") as cur:
            assert await cur.fetchone() is None  # rolled back with its version bump
    finally:
        await db.close()


async def test_a_transaction_is_whole_committed_on_return_or_rolled_back(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    db = await AppDatabase.open(path, V1, what="app.db")
    try:

        def two(conn: sqlite3.Connection) -> int:
            conn.execute("INSERT INTO items (name) VALUES ('x')")
            conn.execute("INSERT INTO items (name) VALUES ('y')")
            return 7

        assert await db.transaction(two) == 7
        assert _committed(path) == ["x", "y"]

        def half(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO items (name) VALUES ('z')")
            conn.execute("INSERT INTO items (name) VALUES ('x')")  # UNIQUE violation

        with pytest.raises(sqlite3.IntegrityError):
            await db.transaction(half)
        assert _committed(path) == ["x", "y"]  # no 'z'
        async with db.lock, db.begin() as conn:
            await conn.execute("INSERT INTO items (name) VALUES ('w')")
        assert _committed(path) == ["x", "y", "w"]
    finally:
        await db.close()
    with pytest.raises(MeshError, match="closed"):
        await db.transaction(two)
    await db.close()  # again: nothing


async def test_group_commit_shares_transactions_and_answers_after_commit(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    db = await AppDatabase.open(path, V1, what="app.db")

    def insert(conn: sqlite3.Connection, names: list[str]) -> list[int | BaseException]:
        out: list[int | BaseException] = []
        for name in names:
            if name == "refused":
                out.append(ValueError("refused on its own merits"))
                continue
            cur = conn.execute("INSERT INTO items (name) VALUES (?)", (name,))
            assert cur.lastrowid is not None
            out.append(cur.lastrowid)
        return out

    gc = db.group_commit(insert, max_batch=16, name="items")
    seen_at_return: list[bool] = []

    async def one(name: str) -> int:
        row = await gc.submit(name)
        seen_at_return.append(name in _committed(path))
        return row

    names = [f"n{i}" for i in range(50)]
    results = await asyncio.gather(
        *(one(n) for n in names), gc.submit("refused"), gc.submit("n3"), return_exceptions=True
    )
    assert all(seen_at_return) and len(seen_at_return) == 50
    assert isinstance(results[50], ValueError)  # refused alone
    assert isinstance(results[51], sqlite3.IntegrityError)  # its batch failed: retried alone
    assert len(set(results[:50])) == 50
    assert gc.commits < 20 and gc.largest > 1  # batched
    late = asyncio.ensure_future(gc.submit("late"))
    await asyncio.sleep(0)
    await db.close()  # drains the group commit first
    assert isinstance(await late, int)
    assert "late" in _committed(path)


async def test_a_cancelled_transaction_holds_the_lock_until_the_thread_finished(
    tmp_path: Path,
) -> None:
    path = tmp_path / "app.db"
    db = await AppDatabase.open(path, V1, what="app.db")
    started = threading.Event()

    def slow(conn: sqlite3.Connection) -> None:
        started.set()
        time.sleep(0.3)
        conn.execute("INSERT INTO items (name) VALUES ('slow')")

    try:
        task = asyncio.create_task(db.transaction(slow))
        await asyncio.to_thread(started.wait, 5)
        task.cancel()
        await asyncio.sleep(0.05)
        assert db.lock.locked() and not task.done()  # no writer may start meanwhile
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not db.lock.locked()
        assert _committed(path) == ["slow"]  # the thread finished what it had begun
    finally:
        await db.close()


async def test_close_is_bounded_when_a_writer_never_lets_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A writer holding the lock forever (a bug elsewhere) must not hang close(): after
    # the grace the connections close anyway and nothing new is written.
    monkeypatch.setattr("core.db.CLOSE_GRACE", 0.1)
    db = await AppDatabase.open(tmp_path / "app.db", V1, what="app.db")
    await db.transaction(lambda c: c.execute("INSERT INTO items (name) VALUES ('kept')"))
    release = asyncio.Event()

    async def hog() -> None:
        async with db.lock:
            await release.wait()

    task = asyncio.get_running_loop().create_task(hog())
    await asyncio.sleep(0)
    try:
        async with asyncio.timeout(30):  # a hang detector, far above the grace
            await db.close()
        assert "writers still busy" in caplog.text
        assert not db.conn._running  # the reader thread was told to stop
        with pytest.raises(MeshError, match="closed"):
            await db.transaction_locked(lambda c: c.execute("SELECT 1"))
        await db.close()  # again: nothing
    finally:
        release.set()
        await task
    assert _committed(tmp_path / "app.db") == ["kept"]


async def test_the_database_threads_never_keep_the_interpreter_alive(tmp_path: Path) -> None:
    db = await AppDatabase.open(tmp_path / "app.db", V1, what="app.db")
    try:
        assert db.conn._thread.daemon  # an unclosed database cannot block the exit
    finally:
        await db.close()
    assert not db.conn._thread.is_alive() or db.conn._thread.daemon
