"""outbox.db: one-transaction enqueue, due/retry/finish, cleanup, migrations, backoff."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from apps.mail.config import MailConfig, parse_listen
from apps.mail.queue import SCHEMA_VERSION, OutboxQueue, QueueFull, read_queue
from core import RetryPolicy
from core.errors import MeshError, UsageError


async def test_enqueue_due_and_finish(tmp_path: Path) -> None:
    q = await OutboxQueue.open(tmp_path / "outbox.db")
    try:
        msg = await q.enqueue("a@mesh", b"raw", "<m1@x>", ["b@mesh", "c@mesh", "b@mesh"], now=100)
        due = await q.due(100, limit=10)
        assert [d.recipient for d in due] == ["b@mesh", "c@mesh"]
        assert all(d.message == msg.id and d.token == msg.token for d in due)
        assert await q.raw(msg.id) == b"raw"
        assert await q.due(99, limit=10) == []
        await q.mark_retry(due[0].id, 200, "450 busy", now=100)
        assert [d.recipient for d in await q.due(150, limit=10)] == ["c@mesh"]
        assert await q.next_due() == 100
        assert await q.next_due(exclude=[due[1].id]) == 200
        await q.mark_delivered(due[1].id)
        await q.mark_failed(due[0].id, "550 no")
        assert await q.pending() == []
        # The message stays until its Sent copy is filed, then goes.
        assert await q.message_count() == 1
        assert [m[0] for m in await q.unsent_copies()] == [msg.id]
        await q.mark_sent_copy(msg.id)
        assert await q.message_count() == 0
    finally:
        await q.close()


async def test_exclude_and_limit(tmp_path: Path) -> None:
    q = await OutboxQueue.open(tmp_path / "outbox.db")
    try:
        for i in range(5):
            await q.enqueue("a@mesh", b"r", f"<{i}@x>", ["b@mesh"], now=i)
        first = await q.due(10, limit=2)
        second = await q.due(10, limit=2, exclude=[d.id for d in first])
        assert len(first) == len(second) == 2
        assert not {d.id for d in first} & {d.id for d in second}
    finally:
        await q.close()


async def test_a_reachable_recipient_is_due_at_once(tmp_path: Path) -> None:
    q = await OutboxQueue.open(tmp_path / "outbox.db")
    try:
        await q.enqueue("a@mesh", b"r", "<1@x>", ["b@mesh", "c@mesh"], now=0)
        for d in await q.due(0, limit=10):
            await q.mark_retry(d.id, 5000, "cannot connect", now=0)
        assert await q.due(100, limit=10) == []
        assert await q.retry_now("b@mesh", now=100) == 1
        assert [d.recipient for d in await q.due(100, limit=10)] == ["b@mesh"]
        assert await q.retry_now("b@mesh", now=100) == 0  # already due
    finally:
        await q.close()


async def test_queue_limit(tmp_path: Path) -> None:
    q = await OutboxQueue.open(tmp_path / "outbox.db")
    try:
        await q.enqueue("a@mesh", b"r", "<1@x>", ["b@mesh"], max_queue=1)
        with pytest.raises(QueueFull):
            await q.enqueue("a@mesh", b"r", "<2@x>", ["b@mesh"], max_queue=1)
        assert await q.message_count() == 1
    finally:
        await q.close()


async def test_enqueue_is_one_transaction(tmp_path: Path) -> None:
    """A failure while inserting deliveries leaves no message behind."""
    q = await OutboxQueue.open(tmp_path / "outbox.db")
    try:
        with pytest.raises(ValueError):
            await q.enqueue("a@mesh", b"r", "<1@x>", [])
        # A recipient that violates a constraint half way through rolls everything back.
        await q._db.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON deliveries WHEN NEW.recipient = 'bad' "
            "BEGIN SELECT RAISE(ABORT, 'boom'); END"
        )
        with pytest.raises(sqlite3.IntegrityError):
            await q.enqueue("a@mesh", b"r", "<2@x>", ["ok@mesh", "bad"])
        assert await q.message_count() == 0
        assert await q.pending() == []
    finally:
        await q.close()


async def test_survives_reopen_and_read_only_view(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    q = await OutboxQueue.open(path)
    await q.enqueue("a@mesh", b"r", "<1@x>", ["b@mesh"], now=5)
    view = read_queue(path)  # while the writer has it open
    assert [(d.recipient, d.next_attempt) for d in view] == [("b@mesh", 5)]
    await q.close()
    q = await OutboxQueue.open(path)
    try:
        assert [d.message_id for d in await q.pending()] == ["<1@x>"]
    finally:
        await q.close()
    assert read_queue(tmp_path / "absent.db") == []


async def test_newer_schema_refused(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    q = await OutboxQueue.open(path)
    await q.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    db.commit()
    db.close()
    with pytest.raises(MeshError, match="newer than this meshsuite"):
        await OutboxQueue.open(path)


def test_backoff_schedule_doubles_to_the_cap() -> None:
    policy = RetryPolicy(initial=60, max_delay=3600, jitter=0.0)
    assert [policy.base_delay(n) for n in range(1, 9)] == [60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert policy.base_delay(10_000) == 3600


def test_backoff_jitter_bounds() -> None:
    policy = RetryPolicy(initial=10, max_delay=100, jitter=0.2)
    rng = random.Random(7)
    delays = [policy.delay(3, rng) for _ in range(500)]
    assert all(32 <= d <= 40 for d in delays)
    assert len({round(d, 6) for d in delays}) > 100  # actually spread


def test_config_parsing() -> None:
    cfg = MailConfig.from_mapping(
        {"smtp": "127.0.0.1:2025", "retry_initial": 1, "retry_max": 8, "expire_after": 30}
    )
    assert cfg.submission == ("127.0.0.1", 2025)
    assert cfg.retry.initial == 1 and cfg.retry.max_delay == 8 and cfg.retry.expiry == 30
    with pytest.raises(UsageError, match="loopback only"):
        parse_listen("0.0.0.0:1025", "smtp")
    with pytest.raises(UsageError, match="unknown"):
        MailConfig.from_mapping({"smpt": "x"})
    with pytest.raises(UsageError, match="retry_initial"):
        MailConfig.from_mapping({"retry_initial": 10, "retry_max": 5})
    with pytest.raises(UsageError, match="positive"):
        MailConfig.from_mapping({"max_size": -1})
