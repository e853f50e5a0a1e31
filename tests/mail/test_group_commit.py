"""Group commit: concurrent submissions and deliveries share transactions, yet each is
acknowledged only once durable, all-or-nothing on its own, and de-duplicated exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from apps.mail.queue import OutboxQueue, QueueFull
from apps.mail.store import MailboxNotFound, MailStore
from core import GroupCommit


def _committed_tokens(path: Path) -> set[str]:
    """What another connection sees: only committed rows."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {str(r[0]) for r in db.execute("SELECT token FROM messages")}
    finally:
        db.close()


async def test_concurrent_enqueues_share_transactions_and_are_committed_on_return(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.db"
    q = await OutboxQueue.open(path)
    seen_at_return: list[bool] = []
    try:

        async def one(i: int) -> str:
            msg = await q.enqueue("a@mesh", b"raw %d" % i, f"<{i}@x>", ["b@mesh", "c@mesh"])
            seen_at_return.append(msg.token in _committed_tokens(path))
            return msg.token

        tokens = await asyncio.gather(*(one(i) for i in range(40)))
        assert q._enqueues.commits < 10 and q._enqueues.largest > 10
        assert all(seen_at_return) and len(seen_at_return) == 40
        assert len(set(tokens)) == 40
        pending = await q.pending()
        assert len(pending) == 80
        # Each delivery points at its own message's bytes.
        raws = await q.raws([d.message for d in pending])
        for d in pending:
            assert raws[d.message] == b"raw %s" % d.message_id.strip("<>").split("@")[0].encode()
    finally:
        await q.close()


async def test_queue_limit_holds_inside_one_batch(tmp_path: Path) -> None:
    q = await OutboxQueue.open(tmp_path / "outbox.db")
    try:
        results = await asyncio.gather(
            *(q.enqueue("a@mesh", b"r", f"<{i}@x>", ["b@mesh"], max_queue=3) for i in range(8)),
            return_exceptions=True,
        )
        assert sum(isinstance(r, QueueFull) for r in results) == 5
        assert await q.message_count() == 3
    finally:
        await q.close()


async def test_a_failing_message_fails_alone_in_its_batch(tmp_path: Path) -> None:
    q = await OutboxQueue.open(tmp_path / "outbox.db")
    try:
        await q._db.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON deliveries WHEN NEW.recipient = 'bad' "
            "BEGIN SELECT RAISE(ABORT, 'boom'); END"
        )
        rcpts = [["ok@mesh"], ["ok@mesh", "bad"], ["ok@mesh"], ["bad"], ["ok@mesh"]]
        results = await asyncio.gather(
            *(q.enqueue("a@mesh", b"r", f"<{i}@x>", r) for i, r in enumerate(rcpts)),
            return_exceptions=True,
        )
        failed = [i for i, r in enumerate(results) if isinstance(r, sqlite3.IntegrityError)]
        assert failed == [1, 3]
        assert sorted(d.message_id for d in await q.pending()) == ["<0@x>", "<2@x>", "<4@x>"]
        assert await q.message_count() == 3
    finally:
        await q.close()


async def test_concurrent_deliveries_dedup_exactly_once(tmp_path: Path) -> None:
    store = await MailStore.open(tmp_path / "mail.db")
    try:
        raws = [b"Subject: m%d\r\n\r\nbody %d\r\n" % (i, i) for i in range(30)]
        uids = await asyncio.gather(
            *(store.deliver("INBOX", raw, dedup_key=f"k{i % 10}") for i, raw in enumerate(raws)),
            store.deliver("Sent", b"Subject: s\r\n\r\nx\r\n", flags=["\\Seen"], dedup_key="s1"),
            store.deliver("Sent", b"Subject: s\r\n\r\nx\r\n", flags=["\\Seen"], dedup_key="s1"),
        )
        # Shared transactions, not one each (and no batch needed a one-by-one retry).
        assert store._deliveries.commits < 10 and store._deliveries.largest > 10
        inbox = [u for u in uids[:30] if u is not None]
        assert sorted(inbox) == list(range(1, 11))  # ten keys: ten messages, UIDs 1..10
        assert sorted(u for u in uids[30:] if u is not None) == [1]
        assert await store.count("INBOX") == 10 and await store.count("Sent") == 1
        for i, uid in enumerate(uids[:30]):
            if uid is not None:
                assert await store.fetch_raw("INBOX", uid) == raws[i]
        assert await store.get_flags("Sent", 1) == {"\\Seen"}
        status = await store.status("INBOX")
        assert status.uidnext == 11 and status.highest_modseq >= 11
        metas = await store.fetch_meta("INBOX")
        assert len({m.modseq for m in metas}) == 10  # each entry its own modseq
        # A later delivery with a known key stays a duplicate.
        assert await store.deliver("INBOX", raws[0], dedup_key="k0") is None
    finally:
        await store.close()


async def test_missing_mailbox_fails_only_its_delivery(tmp_path: Path) -> None:
    store = await MailStore.open(tmp_path / "mail.db")
    try:
        results = await asyncio.gather(
            store.deliver("INBOX", b"Subject: a\r\n\r\n"),
            store.deliver("Nowhere", b"Subject: b\r\n\r\n"),
            store.deliver("inbox", b"Subject: c\r\n\r\n"),
            return_exceptions=True,
        )
        assert isinstance(results[1], MailboxNotFound)
        assert sorted([results[0], results[2]]) == [1, 2]  # type: ignore[type-var]
    finally:
        await store.close()


async def test_group_commit_batches_under_load_and_drains_on_close() -> None:
    batches: list[int] = []

    async def commit(items: list[int]) -> list[int | BaseException]:
        batches.append(len(items))
        await asyncio.sleep(0.01)  # a transaction in flight: later callers queue up
        return [i * 2 if i >= 0 else ValueError(f"negative {i}") for i in items]

    gc: GroupCommit[int, int] = GroupCommit(commit, max_batch=16, name="test")
    results = await asyncio.gather(*(gc.submit(i) for i in range(-1, 40)), return_exceptions=True)
    assert isinstance(results[0], ValueError)
    assert results[1:] == [i * 2 for i in range(40)]
    assert max(batches) == 16 and len(batches) < 10
    late = asyncio.ensure_future(gc.submit(5))
    await asyncio.sleep(0)
    await gc.close()
    assert late.done() and late.result() == 10
    with pytest.raises(RuntimeError, match="closed"):
        await gc.submit(1)


WRITER = """
import asyncio, sys
from pathlib import Path
from apps.mail.store import MailStore

async def main() -> None:
    store = await MailStore.open(Path(sys.argv[1]))
    counter = iter(range(1, 10**9))

    async def loop() -> None:
        while True:
            n = next(counter)
            raw = b"Subject: m%d\\r\\n\\r\\n" % n + b"x" * (n % 5000) + b"\\r\\n"
            uid = await store.deliver("INBOX", raw, dedup_key=f"k{n}")
            sys.stdout.write(f"{uid} {n}\\n")
            sys.stdout.flush()

    await asyncio.gather(*(loop() for _ in range(8)))

asyncio.run(main())
"""


async def test_sigkill_with_concurrent_writers_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """Eight writers at once (so deliveries share commits), then kill -9."""
    db_path = tmp_path / "mail.db"
    root = Path(__file__).resolve().parents[2]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WRITER, str(db_path), cwd=root, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(root)},
    )  # fmt: skip
    acknowledged: dict[int, int] = {}
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while len(acknowledged) < 300 and time.monotonic() < deadline:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line, "writer exited early"
            uid, n = map(int, line.split())
            acknowledged[uid] = n
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert len(acknowledged) >= 300
    store = await MailStore.open(db_path)
    try:
        assert await store.integrity_check() == "ok"
        bodies = await store.fetch_bodies("INBOX", acknowledged)
        for uid, n in acknowledged.items():
            assert bodies[uid].startswith(b"Subject: m%d\r\n" % n)
        uids = await store.list_uids("INBOX")
        assert uids == list(range(1, len(uids) + 1))  # no gaps, no duplicates
    finally:
        await store.close()


async def test_a_writer_stopped_mid_commit_answers_its_callers_and_is_replaced() -> None:
    calls = 0

    async def commit(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise asyncio.CancelledError  # the writer is cancelled while committing
        return [i * 10 for i in items]

    gc: GroupCommit[int, int] = GroupCommit(commit, max_batch=8, name="t")
    with pytest.raises(RuntimeError, match="stopped during a commit"):
        await asyncio.wait_for(gc.submit(1), 5)
    # Before the fix the dead writer was never replaced and this waited forever.
    assert await asyncio.wait_for(gc.submit(2), 5) == 20
    await gc.close()
