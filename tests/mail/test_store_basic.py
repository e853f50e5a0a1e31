"""MailStore against a real SQLite file: delivery, dedup, UIDs, flags, copy/move/expunge."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps.mail.store import MailboxExists, MailboxNotFound, MailStore, StoreError
from apps.mail.store_schema import SCHEMA_VERSION

RAW = (
    b"From: Alice <alice@example.mesh>\r\nTo: bob@mesh\r\nSubject: hello\r\n"
    b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\nMessage-ID: <1@x>\r\n\r\nbody line\r\n"
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[MailStore]:
    s = await MailStore.open(tmp_path / "mail.db")
    try:
        yield s
    finally:
        await s.close()


async def test_default_mailboxes_with_special_use(store: MailStore) -> None:
    boxes = {b.name: b.special_use for b in await store.list_mailboxes()}
    assert boxes == {
        "INBOX": None,
        "Sent": "\\Sent",
        "Drafts": "\\Drafts",
        "Trash": "\\Trash",
        "Junk": "\\Junk",
    }
    validities = {b.uidvalidity for b in await store.list_mailboxes()}
    assert len(validities) == 5 and 0 not in validities


async def test_store_files_are_owner_only(store: MailStore, tmp_path: Path) -> None:
    await store.deliver("INBOX", RAW)
    for name in ("mail.db", "mail.db-wal", "mail.db-shm"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name


async def test_deliver_returns_uids_and_reads_back(store: MailStore) -> None:
    when = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
    uid1 = await store.deliver("INBOX", RAW, flags=["\\seen"], internal_date=when)
    uid2 = await store.deliver("inbox", RAW)
    assert (uid1, uid2) == (1, 2)
    assert await store.count("INBOX") == 2
    assert await store.fetch_raw("INBOX", 1) == RAW
    assert await store.fetch_raw("INBOX", 99) is None
    assert await store.get_flags("INBOX", 1) == {"\\Seen"}
    assert await store.list_uids("INBOX") == [1, 2]
    meta = (await store.fetch_meta("INBOX", [1]))[0]
    assert meta.internal_date == when and meta.size == len(RAW)
    assert b'"hello"' in meta.envelope and b'"alice" "example.mesh"' in meta.envelope


async def test_bare_lf_is_stored_as_crlf(store: MailStore) -> None:
    uid = await store.deliver("INBOX", RAW.replace(b"\r\n", b"\n"))
    assert uid is not None
    assert await store.fetch_raw("INBOX", uid) == RAW


async def test_dedup_key_suppresses_second_delivery(store: MailStore) -> None:
    seen: list[tuple[str, int]] = []
    unsubscribe = store.subscribe_new_mail(lambda box, uid: seen.append((box, uid)))
    assert await store.deliver("INBOX", RAW, dedup_key="<1@x>|ab") == 1
    assert await store.deliver("INBOX", RAW, dedup_key="<1@x>|ab") is None
    assert await store.deliver("INBOX", RAW, dedup_key="<1@x>|cd") == 2
    unsubscribe()
    await store.deliver("INBOX", RAW)
    assert seen == [("INBOX", 1), ("INBOX", 2)]


async def test_uids_never_reused_after_expunge_and_reopen(tmp_path: Path) -> None:
    s = await MailStore.open(tmp_path / "m.db")
    for _ in range(3):
        await s.deliver("INBOX", RAW)
    await s.store_flags("INBOX", [2, 3], "+", ["\\Deleted"])
    assert await s.expunge("INBOX") == [2, 3]
    validity = (await s.mailbox("INBOX")).uidvalidity
    await s.close()
    s = await MailStore.open(tmp_path / "m.db")
    try:
        assert await s.deliver("INBOX", RAW) == 4
        assert (await s.mailbox("INBOX")).uidvalidity == validity
    finally:
        await s.close()


async def test_recreated_mailbox_gets_new_uidvalidity(store: MailStore) -> None:
    first = await store.create_mailbox("Work")
    await store.deliver("Work", RAW)
    await store.delete_mailbox("Work")
    second = await store.create_mailbox("Work")
    assert second.uidvalidity != first.uidvalidity
    assert await store.deliver("Work", RAW) == 1
    with pytest.raises(MailboxExists):
        await store.create_mailbox("Work")
    with pytest.raises(MailboxNotFound):
        await store.deliver("Nope", RAW)
    with pytest.raises(StoreError):
        await store.delete_mailbox("inbox")


async def test_flags_copy_move_share_bodies(store: MailStore, tmp_path: Path) -> None:
    for _ in range(3):
        await store.deliver("INBOX", RAW)
    assert await store.store_flags("INBOX", [1, 2], "+", ["\\Flagged", "work"]) == {
        1: frozenset({"\\Flagged", "work"}),
        2: frozenset({"\\Flagged", "work"}),
    }
    assert await store.store_flags("INBOX", [1], "-", ["work"]) == {1: frozenset({"\\Flagged"})}
    assert await store.store_flags("INBOX", [3], "", ["\\Seen"]) == {3: frozenset({"\\Seen"})}
    with pytest.raises(StoreError):
        await store.store_flags("INBOX", [1], "+", ["\\Recent"])
    assert await store.copy("INBOX", [1, 3], "Trash") == [(1, 1), (3, 2)]
    assert await store.get_flags("Trash", 2) == {"\\Seen"}
    assert await store.move("INBOX", [2], "Junk") == [(2, 1)]
    assert await store.list_uids("INBOX") == [1, 3]
    db = sqlite3.connect(tmp_path / "mail.db")
    try:
        assert db.execute("SELECT count(*) FROM bodies").fetchone()[0] == 3
        version = db.execute("SELECT version FROM schema_version").fetchone()[0]
        assert version == SCHEMA_VERSION
    finally:
        db.close()
    await store.store_flags("INBOX", [1, 3], "+", ["\\Deleted"])
    assert await store.expunge("INBOX", [3]) == [3]
    assert await store.list_uids("INBOX") == [1]


async def test_rename_moves_children_and_inbox_rename_moves_messages(store: MailStore) -> None:
    await store.create_mailbox("A")
    await store.create_mailbox("A/B")
    await store.rename_mailbox("A", "C")
    names = {b.name for b in await store.list_mailboxes()}
    assert {"C", "C/B"} <= names and "A" not in names
    await store.deliver("INBOX", RAW)
    await store.rename_mailbox("INBOX", "Old")
    assert await store.count("INBOX") == 0
    assert await store.count("Old") == 1


async def test_rename_into_own_subtree_and_clashes(store: MailStore) -> None:
    await store.create_mailbox("A")
    await store.create_mailbox("A/B")
    await store.deliver("A/B", RAW)
    await store.rename_mailbox("A", "A/B")  # A -> A/B, A/B -> A/B/B
    names = {b.name for b in await store.list_mailboxes()}
    assert {"A/B", "A/B/B"} <= names and "A" not in names
    assert await store.count("A/B/B") == 1
    await store.create_mailbox("Y/B")
    with pytest.raises(MailboxExists):
        await store.rename_mailbox("A/B", "Y")  # its child A/B/B would land on Y/B
    assert {"A/B", "A/B/B", "Y/B"} <= {b.name for b in await store.list_mailboxes()}
    with pytest.raises(MailboxExists):
        await store.rename_mailbox("A/B", "Trash")


async def test_renamed_special_use_mailbox_is_not_recreated(tmp_path: Path) -> None:
    s = await MailStore.open(tmp_path / "m.db")
    await s.rename_mailbox("Sent", "Sent Items")
    await s.close()
    s = await MailStore.open(tmp_path / "m.db")
    try:
        boxes = {b.name: b.special_use for b in await s.list_mailboxes()}
        assert boxes["Sent Items"] == "\\Sent" and "Sent" not in boxes
    finally:
        await s.close()


async def test_changed_since_and_recent(store: MailStore) -> None:
    await store.deliver("INBOX", RAW)
    await store.deliver("INBOX", RAW)
    assert await store.claim_recent("INBOX") == {1, 2}
    assert await store.claim_recent("INBOX") == set()
    _, modseq = await store.uid_flags("INBOX")
    await store.store_flags("INBOX", [2], "+", ["\\Seen"])
    changed, now = await store.changed_since("INBOX", modseq)
    assert changed == [(2, frozenset({"\\Seen"}))] and now > modseq
    status = await store.status("INBOX")
    assert (status.messages, status.unseen, status.uidnext) == (2, 1, 3)


_hostile = st.lists(
    st.one_of(
        st.binary(max_size=80),
        st.sampled_from(
            [
                b"Date: Mon, 99 Xyz 99999 99:99:99 +9999\r\n",
                b"Date: \r\n",
                b"Content-Type: multipart/mixed; boundary=\r\n",
                b"Content-Type: message/rfc822\r\n\r\n",
                b"From: <<<@>>>\r\n",
                b"\xff\xfe\r\n",
                b"\n\n",
            ]
        ),
    ),
    max_size=12,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pieces=_hostile)
async def test_any_message_bytes_are_stored(store: MailStore, pieces: list[bytes]) -> None:
    raw = b"".join(pieces)
    uid = await store.deliver("INBOX", raw)
    assert uid is not None
    stored = await store.fetch_raw("INBOX", uid)
    assert stored is not None and stored.replace(b"\r\n", b"\n") == raw.replace(b"\r\n", b"\n")
    (meta,) = await store.fetch_meta("INBOX", [uid])
    assert meta.envelope.startswith(b"(") and meta.bodystructure.startswith(b"(")
