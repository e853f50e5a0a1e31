"""Author headers: a Sender: naming another key, or a display name showing another key's
address, is refused on submission AND on mesh delivery (docs/mail.md), with real nodes."""

from __future__ import annotations

import asyncio
import smtplib

import pytest

from apps.mail.message import author_problem, header_fields
from apps.mail.smtp_client import ClientTransaction, run_transaction
from tests.mail.helpers import PASSWORD, MailNode, on_shared_mesh

K1, K2 = "1" * 64 + "@mesh", "2" * 64 + "@mesh"


def _forgeries(own: str, other: str) -> dict[str, str]:
    """Header blocks that a client would show as coming from ``other``."""
    return {
        "sender": f"From: {own}\r\nSender: {other}\r\n",
        "display name": f'From: "{other}" <{own}>\r\n',
        "encoded display name": f"From: =?utf-8?q?{other.replace('@', '=40')}?= <{own}>\r\n",
        "comment": f"From: {own} ({other})\r\n",
        "two senders": f"From: {own}\r\nSender: {own}\r\nSender: {own}\r\n",
    }


@pytest.mark.parametrize("case", sorted(_forgeries(K1, K2)))
def test_author_problem_names_each_forgery(case: str) -> None:
    header = _forgeries(K1, K2)[case]
    assert author_problem(header_fields((header + "\r\nx\r\n").encode()), K1) is not None


def test_honest_headers_pass() -> None:
    for header in (
        f"From: {K1}\r\n",
        f"From: Alice <{K1}>\r\nSender: {K1}\r\n",
        f'From: "{K1}" <{K1}>\r\n',
        f"From: =?utf-8?q?J=C3=BCrgen?= <{K1.upper()}>\r\n",
    ):
        assert author_problem(header_fields((header + "\r\nx\r\n").encode()), K1) is None


def _submit(port: int, own: str, rcpt: str, header: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="localhost", timeout=30) as smtp:
        smtp.login(own, PASSWORD)
        smtp.mail(own)
        smtp.rcpt(rcpt)
        return smtp.data(f"{header}To: {rcpt}\r\nSubject: who?\r\n\r\nbody\r\n".encode())


@on_shared_mesh
async def test_submission_refuses_forged_sender_and_display_names(
    mail_pair: tuple[MailNode, MailNode],
) -> None:
    a, b = mail_pair
    port = a.service.submission_port
    assert port is not None
    for case, header in _forgeries(a.address, b.address).items():
        code, text = await asyncio.to_thread(_submit, port, a.address, b.address, header)
        assert code == 550 and text.startswith(b"5.7.1 the "), (case, code, text)
    assert await a.queue.message_count() == 0
    code, _ = await asyncio.to_thread(
        _submit, port, a.address, b.address, f"From: Me <{a.address}>\r\nSender: {a.address}\r\n"
    )
    assert code == 250


@on_shared_mesh
async def test_mesh_delivery_refuses_forged_sender_and_display_names(
    mail_pair: tuple[MailNode, MailNode],
) -> None:
    """A node sends straight to B's mesh SMTP (as a hostile node would, not via its queue)."""
    a, b = mail_pair
    for case, header in _forgeries(a.address, b.address).items():
        content = f"{header}To: {b.address}\r\nSubject: x\r\nMessage-ID: <{case}@a>\r\n\r\nx\r\n"
        reader, writer = await a.node.open_connection(b.node.address, b.service.config.mesh_port)
        txn = ClientTransaction("[IPv6:a]", a.address, [b.address], content.encode())
        outcome = await run_transaction(txn, reader, writer, timeout=20)
        assert not outcome.delivered, case
        assert "550 5.7.1 the " in outcome.permanent[b.address], case
    assert await b.store.count("INBOX") == 0
