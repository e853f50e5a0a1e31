"""The queue runner: retry while the recipient is away, expiry and permanent failures
bounce (RFC 3464 into the sender's INBOX), Sent copies survive a crash exactly once."""

from __future__ import annotations

import email
from email.message import Message
from email.policy import default
from pathlib import Path

from apps.mail.config import MailConfig
from apps.mail.queue import OUTBOX_FILE_NAME, OutboxQueue
from apps.mail.service import MAIL_STORE_FILE_NAME, MailService
from apps.mail.store import MailStore
from core.identity import Identity
from core.mailaddr import MailAddress
from core.node import Node
from tests.mail.helpers import EmbeddedMesh, MailNode, on_shared_mesh, smtp_send, wait_for

FAST = {"retry_initial": 0.2, "retry_max": 0.4}


def _mail(frm: str, to: str, subject: str = "queued", size: int = 0) -> bytes:
    body = ("z" * 76 + "\r\n") * (size // 78 + 1) if size else "hi\r\n"
    return f"From: {frm}\r\nTo: {to}\r\nSubject: {subject}\r\n\r\n{body}".encode()


async def _only(store: MailStore, mailbox: str) -> Message:
    uids = await store.list_uids(mailbox)
    assert len(uids) == 1, uids
    raw = await store.fetch_raw(mailbox, uids[0])
    assert raw is not None
    return email.message_from_bytes(raw, policy=default)


def _status_block(dsn: Message) -> Message:
    assert dsn.get_content_type() == "multipart/report"
    report = dsn.get_payload()[1]
    assert report.get_content_type() == "message/delivery-status"
    block: Message = report.get_payload()[1]
    return block


@on_shared_mesh
async def test_recipient_offline_then_back(tmp_path: Path, mesh_nodes: list[Node]) -> None:
    a = await MailNode.serve(mesh_nodes[0], tmp_path / "a", **FAST)
    b = await MailNode.serve(mesh_nodes[1], tmp_path / "b")
    try:
        await b.service.close()  # B's node stays, its mail service is gone
        await smtp_send(a, _mail(a.address, b.address), [b.address])

        async def retried() -> bool:
            pending = await a.queue.pending()
            return bool(pending) and pending[0].attempts >= 2

        await wait_for("A to retry", retried)
        pending = await a.queue.pending()
        assert "cannot connect" in (pending[0].last_error or "")
        b.service = MailService(
            b.node,
            MailConfig.from_mapping({"smtp": "127.0.0.1:0", "imap": "127.0.0.1:0"}),
            b.data_dir,
        )
        await b.service.start()
        await wait_for("the mail at B", lambda: b.store.count("INBOX"))
        await wait_for("A's queue to drain", lambda: _drained(a))
        assert await b.store.count("INBOX") == 1
        assert await a.store.count("INBOX") == 0  # no bounce
    finally:
        await a.close()
        await b.close()


async def _drained(node: MailNode) -> bool:
    return await node.queue.message_count() == 0


@on_shared_mesh
async def test_expiry_bounces_into_the_senders_inbox(
    tmp_path: Path, mesh_nodes: list[Node]
) -> None:
    # No node has that key: the connection attempt times out (io_timeout) and retries.
    a = await MailNode.serve(
        mesh_nodes[0], tmp_path / "a", expire_after=1.0, io_timeout=1.0, **FAST
    )
    nobody = str(MailAddress(Identity.generate().public_key))
    try:
        await smtp_send(a, _mail(a.address, nobody, "to nobody"), [nobody])
        await wait_for("the bounce", lambda: a.store.count("INBOX"), timeout=15)
        dsn = await _only(a.store, "INBOX")
        block = _status_block(dsn)
        assert block["Final-Recipient"] == f"rfc822; {nobody}"
        assert block["Action"] == "failed" and block["Status"] == "4.4.7"
        assert "cannot connect" in block["Diagnostic-Code"]
        assert b"Subject: to nobody" in dsn.get_payload()[2].as_bytes()
        await wait_for("A's queue to drain", lambda: _drained(a))
        assert await a.store.count("Sent") == 1
    finally:
        await a.close()


@on_shared_mesh
async def test_permanent_refusal_bounces_at_once(tmp_path: Path, mesh_nodes: list[Node]) -> None:
    a = await MailNode.serve(mesh_nodes[0], tmp_path / "a", retry_initial=60, retry_max=60)
    b = await MailNode.serve(mesh_nodes[1], tmp_path / "b", max_size=2000)
    try:
        await smtp_send(a, _mail(a.address, b.address, "too big", size=10_000), [b.address])
        await wait_for("the bounce", lambda: a.store.count("INBOX"))
        block = _status_block(await _only(a.store, "INBOX"))
        assert block["Status"] == "5.3.4"
        assert "552" in block["Diagnostic-Code"]
        assert block["Remote-MTA"] == f"x-mesh; {b.node.address}"
        assert await b.store.count("INBOX") == 0
        await wait_for("A's queue to drain", lambda: _drained(a))
    finally:
        await a.close()
        await b.close()


@on_shared_mesh
async def test_sent_copy_exactly_once_after_crashes(tmp_path: Path, mesh: EmbeddedMesh) -> None:
    """Crash after the queue commit, and again after the Sent copy but before it was
    marked: every restart (node and service) converges on one Sent copy."""
    identity = Identity.generate()
    own = str(MailAddress(identity.public_key))
    data = tmp_path / "a"
    data.mkdir()
    queue = await OutboxQueue.open(data / OUTBOX_FILE_NAME)
    first = await queue.enqueue(own, _mail(own, own, "one"), "<one@x>", [own])
    second = await queue.enqueue(own, _mail(own, own, "two"), "<two@x>", [own])
    await queue.close()
    # The second message's Sent copy made it to the store before the "crash".
    store = await MailStore.open(data / MAIL_STORE_FILE_NAME)
    await store.deliver("Sent", _mail(own, own, "two"), dedup_key=f"sent|{second.token}")
    await store.close()
    del first
    for _ in range(2):  # start, drain, stop; twice
        a = await MailNode.start(mesh, data, identity, wait=False)  # mail to self only
        try:
            await wait_for("the queue to drain", lambda a=a: _drained(a))
            assert await a.store.count("Sent") == 2
            assert await a.store.count("INBOX") == 2  # both were to self
        finally:
            await a.close()
