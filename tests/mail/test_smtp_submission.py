"""The mail service end to end between real embedded nodes: smtplib submits at A, B stores;
Sent copies, mail to oneself, login and sender rules, no password → no service."""

from __future__ import annotations

import asyncio
import email
import smtplib
from email.message import EmailMessage
from email.policy import default
from pathlib import Path

import pytest

from apps.mail.config import MailConfig
from apps.mail.passwords import PASSWORD_FILE_NAME, PasswordRecord, load_password, set_password
from apps.mail.service import MailService
from core.errors import MeshError, UsageError
from core.node import Node
from tests.mail.helpers import PASSWORD, MailNode, on_shared_mesh, smtp_send, wait_for


def _message(a: MailNode, to: list[str], subject: str = "hello") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = a.address
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg.set_content("first line\n.a line with a leading dot\nüñíçødé\n")
    msg.add_attachment(
        bytes(range(256)) * 40, maintype="application", subtype="octet-stream", filename="blob.bin"
    )
    return msg


@on_shared_mesh
async def test_submit_at_a_is_stored_at_b(mail_pair: tuple[MailNode, MailNode]) -> None:
    a, b = mail_pair
    refused = await smtp_send(a, _message(a, [b.address]), [b.address])
    assert refused == {}
    await wait_for("the mail at B", lambda: b.store.count("INBOX"))
    raw = await b.store.fetch_raw("INBOX", (await b.store.list_uids("INBOX"))[0])
    assert raw is not None
    got = email.message_from_bytes(raw, policy=default)
    assert got["From"] == a.address and got["Subject"] == "hello"
    assert str(got["Message-ID"]).endswith(".mesh>")  # added by the submission server
    received = str(got["Received"])
    assert str(a.node.address) in received and str(b.node.address) in received
    body = got.get_body(("plain",))
    assert body is not None
    assert (
        body.get_content().replace("\r\n", "\n")
        == "first line\n.a line with a leading dot\nüñíçødé\n"
    )
    attachment = next(got.iter_attachments())
    assert attachment.get_filename() == "blob.bin"
    assert attachment.get_content() == bytes(range(256)) * 40
    # A filed exactly one Sent copy and its queue is empty.
    await wait_for("A's queue to drain", lambda: _empty(a))
    assert await a.store.count("Sent") == 1
    assert "\\Seen" in await a.store.get_flags("Sent", (await a.store.list_uids("Sent"))[0])
    assert await a.store.count("INBOX") == 0


async def _empty(node: MailNode) -> bool:
    return await node.queue.message_count() == 0


@on_shared_mesh
async def test_reply_and_mail_to_self(mail_pair: tuple[MailNode, MailNode]) -> None:
    a, b = mail_pair
    await smtp_send(b, _message(b, [a.address, b.address], "reply"), [a.address, b.address])
    await wait_for("B's mail at A", lambda: a.store.count("INBOX"))
    await wait_for("B's mail to itself", lambda: b.store.count("INBOX"))
    await wait_for("B's queue to drain", lambda: _empty(b))
    assert await b.store.count("INBOX") == 1
    assert await b.store.count("Sent") == 1
    raw = await b.store.fetch_raw("INBOX", (await b.store.list_uids("INBOX"))[0])
    assert raw is not None and b"Subject: reply" in raw


@on_shared_mesh
async def test_message_id_and_date_added_when_missing(mail_pair: tuple[MailNode, MailNode]) -> None:
    a, b = mail_pair
    raw = (
        f"From: {a.address}\r\nTo: {b.address}\r\nBcc: {b.address}\r\nSubject: bare\r\n"
        "\r\nno ids\r\n"
    ).encode()
    await smtp_send(a, raw, [b.address])
    await wait_for("the mail at B", lambda: b.store.count("INBOX"))
    stored = await b.store.fetch_raw("INBOX", (await b.store.list_uids("INBOX"))[0])
    assert stored is not None
    got = email.message_from_bytes(stored, policy=default)
    assert got["Message-ID"] and got["Date"]
    assert got["Bcc"] is None  # not shown to recipients ...
    await wait_for("A's Sent copy", lambda: a.store.count("Sent"))
    sent = await a.store.fetch_raw("Sent", (await a.store.list_uids("Sent"))[0])
    assert sent is not None and b"\r\nBcc: " in sent  # ... but kept in the sender's copy


def _rules_dialogue(port: int, a: str, b: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="localhost", timeout=30) as smtp:
        smtp.ehlo()
        assert "PLAIN" in smtp.esmtp_features.get("auth", "")
        code, text = smtp.mail(a)  # no login yet
        assert code == 530 and b"mesh mail passwd" in text
        with pytest.raises(smtplib.SMTPAuthenticationError) as err:
            smtp.login(a, "wrong password")
        assert err.value.smtp_code == 535
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login(b, PASSWORD)  # the right password with someone else's name
        smtp.login(a.upper(), PASSWORD)  # the user name is case-insensitive
        code, text = smtp.mail(b)
        assert code == 553 and a.encode() in text
        smtp.rset()
        assert smtp.mail(a)[0] == 250
        code, text = smtp.rcpt("friend@example.com")
        assert code == 550 and text.startswith(
            b"5.1.2 only <key>@mesh and <key>@yggmail addresses are reachable"
        )
        assert smtp.rcpt("nothex@mesh")[0] == 550
        assert smtp.rcpt(b)[0] == 250
        code, text = smtp.data(f"From: {b}\r\nSubject: forged\r\n\r\nx\r\n".encode())
        assert code == 550 and b"header From:" in text
        smtp.rset()
        smtp.mail(a)
        smtp.rcpt(b)
        code, text = smtp.data(f"From: {a}, {b}\r\nSubject: two\r\n\r\nx\r\n".encode())
        assert code == 550


def _auth_login_dialogue(port: int, a: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="localhost", timeout=30) as smtp:
        smtp.ehlo()
        smtp.user, smtp.password = a, PASSWORD
        code, _ = smtp.auth("LOGIN", smtp.auth_login, initial_response_ok=False)
        assert code == 235


@on_shared_mesh
async def test_submission_rules(mail_pair: tuple[MailNode, MailNode]) -> None:
    a, b = mail_pair
    port = a.service.submission_port
    assert port is not None
    await asyncio.to_thread(_rules_dialogue, port, a.address, b.address)
    await asyncio.to_thread(_auth_login_dialogue, port, a.address)
    assert await a.queue.message_count() == 0
    assert await b.store.count("INBOX") == 0


@on_shared_mesh
async def test_no_password_no_service(tmp_path: Path, mesh_nodes: list[Node]) -> None:
    service = MailService(
        mesh_nodes[2],
        MailConfig.from_mapping({"smtp": "127.0.0.1:0", "imap": "127.0.0.1:0"}),
        tmp_path / "n",
    )
    with pytest.raises(MeshError, match="mesh mail passwd"):
        await service.start()
    assert service.submission_port is None and service.imap_port is None


def test_password_file(tmp_path: Path) -> None:
    path = set_password(tmp_path, "a long password")
    assert path.name == PASSWORD_FILE_NAME and (path.stat().st_mode & 0o777) == 0o600
    record = load_password(tmp_path)
    assert record.check(b"a long password") and not record.check(b"a long passworD")
    assert b"a long password" not in path.read_bytes()
    other = PasswordRecord.create("a long password")
    assert other.salt != record.salt and other.hash != record.hash  # random salt
    with pytest.raises(UsageError):
        set_password(tmp_path, "short")
    path.chmod(0o644)
    with pytest.raises(MeshError, match="chmod 600"):
        load_password(tmp_path)
    path.chmod(0o600)
    path.write_text('{"version": 1, "kdf": "md5"}')
    with pytest.raises(MeshError, match="mesh mail passwd"):
        load_password(tmp_path)


def _login(port: int, user: str, password: str) -> int:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="localhost", timeout=30) as smtp:
        try:
            return smtp.login(user, password)[0]
        except smtplib.SMTPAuthenticationError as exc:
            return exc.smtp_code


@on_shared_mesh
async def test_new_password_applies_without_restart(mail_pair: tuple[MailNode, MailNode]) -> None:
    a, _ = mail_pair
    port = a.service.submission_port
    assert port is not None
    assert await asyncio.to_thread(_login, port, a.address, PASSWORD) == 235
    set_password(a.data_dir, "the new password")
    assert await asyncio.to_thread(_login, port, a.address, PASSWORD) == 535
    assert await asyncio.to_thread(_login, port, a.address, "the new password") == 235
    (a.data_dir / PASSWORD_FILE_NAME).unlink()  # no record: nobody gets in
    assert await asyncio.to_thread(_login, port, a.address, "the new password") == 535


@on_shared_mesh
async def test_port_in_use_is_a_clear_error(tmp_path: Path, mesh_nodes: list[Node]) -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        with pytest.raises(MeshError, match=r"cannot listen on 127\.0\.0\.1:\d+.*\[mail\]"):
            await MailNode.serve(mesh_nodes[2], tmp_path / "a", smtp=f"127.0.0.1:{port}")
    finally:
        blocker.close()
        await blocker.wait_closed()


@on_shared_mesh
async def test_many_local_clients_at_once(mail_pair: tuple[MailNode, MailNode]) -> None:
    """Every local client comes from 127.0.0.1: no per-peer cap on submission."""
    a, _ = mail_pair
    port = a.service.submission_port
    assert port is not None
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(12)]
    try:
        greetings = [await asyncio.wait_for(r.readline(), 10) for r, _ in conns]
        assert all(g.startswith(b"220 ") for g in greetings)
    finally:
        for _, w in conns:
            w.close()
