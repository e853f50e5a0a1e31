"""Special-use mailboxes and Sent copies: a client may delete or rename Sent; copies follow
the \\Sent attribute, Sent is re-created (with \\Sent) when needed, and a copy that cannot be
filed is retried with backoff, shown in `mesh mail queue`, and logged once, not per second."""

from __future__ import annotations

import asyncio
import imaplib
import itertools
import logging
from email.message import EmailMessage

import pytest

from apps.mail import runner as runner_module
from apps.mail.store import StoreError
from tests.mail.helpers import PASSWORD, MailNode, on_shared_mesh, smtp_send, wait_for


def _imap(node: MailNode) -> imaplib.IMAP4:
    assert node.service.imap_port is not None
    m = imaplib.IMAP4("127.0.0.1", node.service.imap_port, timeout=20)
    m.login(node.address, PASSWORD)
    return m


def _list(node: MailNode) -> list[bytes]:
    m = _imap(node)
    try:
        typ, listed = m.list()
        assert typ == "OK"
        return [x for x in listed if isinstance(x, bytes)]
    finally:
        m.logout()


def _imap_do(node: MailNode, *commands: tuple[str, ...]) -> None:
    m = _imap(node)
    try:
        for name, *args in commands:
            typ, data = getattr(m, name)(*args)
            assert typ == "OK", (name, args, data)
    finally:
        m.logout()


def _mail(a: MailNode, b: MailNode, subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = a.address, b.address, subject
    msg.set_content("x")
    return msg


def _noisy(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name in ("apps.mail.runner", "core.outbox")
    ]


async def _sent_count(node: MailNode, name: str) -> int:
    try:
        return await node.store.count(name)
    except StoreError:
        return 0


@on_shared_mesh
async def test_deleted_sent_is_recreated_with_its_attribute_and_nothing_floods_the_log(
    mail_pair: tuple[MailNode, MailNode], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = mail_pair
    await asyncio.to_thread(_imap_do, a, ("delete", "Sent"))
    assert not any(line.endswith(b" Sent") for line in await asyncio.to_thread(_list, a))
    for i in range(3):
        await smtp_send(a, _mail(a, b, f"after delete {i}"), [b.address])
    await wait_for("3 copies in a new Sent", lambda: _count_is(a, "Sent", 3))
    await wait_for("the queue to empty", _queue_empty(a))
    listed = await asyncio.to_thread(_list, a)
    assert b'(\\HasNoChildren \\Sent) "/" Sent' in listed
    assert _noisy(caplog) == []


async def _count_is(node: MailNode, name: str, n: int) -> bool:
    return await _sent_count(node, name) == n


def _queue_empty(node: MailNode):  # type: ignore[no-untyped-def]
    async def probe() -> bool:
        return await node.queue.message_count() == 0

    return probe


@on_shared_mesh
async def test_sent_copies_follow_the_attribute_to_a_renamed_mailbox(
    mail_pair: tuple[MailNode, MailNode],
) -> None:
    a, b = mail_pair
    await asyncio.to_thread(_imap_do, a, ("rename", "Sent", '"Sent Items"'))
    await smtp_send(a, _mail(a, b, "renamed"), [b.address])
    await wait_for("the copy in Sent Items", lambda: _count_is(a, "Sent Items", 1))
    listed = await asyncio.to_thread(_list, a)
    assert b'(\\HasNoChildren \\Sent) "/" "Sent Items"' in listed
    assert not any(line.endswith(b'"/" Sent') for line in listed)  # no second Sent


@on_shared_mesh
async def test_a_recreated_sent_gets_its_special_use_back(
    mail_pair: tuple[MailNode, MailNode],
) -> None:
    a, _ = mail_pair
    await asyncio.to_thread(_imap_do, a, ("delete", "Sent"), ("create", "Sent"))
    assert b'(\\HasNoChildren \\Sent) "/" Sent' in await asyncio.to_thread(_list, a)
    await asyncio.to_thread(_imap_do, a, ("create", "Drafts2"))
    assert b'(\\HasNoChildren) "/" Drafts2' in await asyncio.to_thread(_list, a)


@on_shared_mesh
@pytest.mark.timeout(60)
async def test_a_copy_that_cannot_be_filed_backs_off_shows_in_the_queue_and_logs_once(
    mail_pair: tuple[MailNode, MailNode],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = mail_pair
    monkeypatch.setattr(runner_module, "COPY_RETRY_INITIAL", 0.5)
    store = a.store
    real = store.special_mailbox
    calls: list[float] = []

    async def broken(use: str, default: str) -> str:
        calls.append(asyncio.get_running_loop().time())
        raise StoreError("disk I/O error (simulated)")

    monkeypatch.setattr(store, "special_mailbox", broken)
    await smtp_send(a, _mail(a, b, "cannot file"), [b.address])
    await asyncio.sleep(4.0)
    # attempts at about 0, 0.5, 1.5, 3.5 s: backoff, not once a second (or a tight loop)
    assert 3 <= len(calls) <= 5, calls
    gaps = [y - x for x, y in itertools.pairwise(calls)]
    assert all(later > earlier for earlier, later in itertools.pairwise(gaps)), gaps
    warnings = _noisy(caplog)
    assert len(warnings) == 1 and "cannot file Sent copies" in warnings[0], warnings
    rows = await a.service._control_queue({})
    copy = [r for r in rows if r["recipient"] == "Sent mailbox (local copy)"]
    assert copy and copy[0]["attempts"] == len(calls)
    assert "disk I/O error" in copy[0]["last_error"]
    monkeypatch.setattr(store, "special_mailbox", real)
    await wait_for("the copy filed after the store recovered", lambda: _count_is(a, "Sent", 1))
    await wait_for("the queue to empty", _queue_empty(a))
    assert [r for r in await a.service._control_queue({}) if r["delivery"] is None] == []
