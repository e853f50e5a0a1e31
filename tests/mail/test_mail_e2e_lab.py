"""Mail end to end between two lab hosts with real yggdrasil 0.5.12 daemons.

smtplib submits at A, imaplib reads at B; the mesh leg crosses the real daemons' TUNs.
Nodes A and B run in this process (their mesh sockets live in the hosts' namespaces);
their submission/IMAP listeners are on this process's 127.0.0.1. The crash test runs
the sender as a separate process inside host A and kills it with SIGKILL mid-queue.
"""

from __future__ import annotations

import asyncio
import email
import signal
import smtplib
import socket
import sqlite3
import subprocess
import textwrap
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

import pytest

from apps.mail.config import MESH_SMTP_PORT
from apps.mail.passwords import set_password
from apps.mail.service import MAIL_STORE_FILE_NAME
from apps.mail.smtp_client import ClientTransaction, run_transaction
from tests.lab.fixtures import open_node, two_host_lab
from tests.lab.lab import Host, Lab
from tests.mail.helpers import PASSWORD, MailNode, imap_fetch_all, wait_for

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from two_host_lab("msm")


class LabMail(MailNode):
    """A node attached to a lab host's daemon, with the mail service on it."""

    @classmethod
    async def on_host(cls, host: Host, data_dir: Path, **config: Any) -> LabMail:
        data_dir.mkdir(parents=True, exist_ok=True)
        set_password(data_dir, PASSWORD)
        return await cls.adopt(await open_node(host, data_dir=data_dir), data_dir, **config)


@pytest.fixture
async def pair(lab: Lab, tmp_path: Path) -> AsyncIterator[tuple[LabMail, LabMail]]:
    a = await LabMail.on_host(lab.hosts["a"], tmp_path / "a", retry_initial=0.5, retry_max=1)
    try:
        b = await LabMail.on_host(lab.hosts["b"], tmp_path / "b")
    except BaseException:
        await a.close()
        raise
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


def _submit(port: int, user: str, msg: EmailMessage, to: list[str]) -> None:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="localhost", timeout=30) as smtp:
        smtp.login(user, PASSWORD)
        assert smtp.send_message(msg, to_addrs=to) == {}


def _imap_fetch_all(port: int, user: str, mailbox: str = "INBOX") -> list[bytes]:
    return imap_fetch_all(port, user, PASSWORD, mailbox)


def _message(frm: str, to: list[str], subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = frm, ", ".join(to), subject
    msg.set_content("Hello over the mesh.\n.dot line\n")
    msg.add_attachment(
        bytes(range(256)) * 64, maintype="application", subtype="x-test", filename="data.bin"
    )
    return msg


async def _count(node: LabMail, mailbox: str = "INBOX") -> int:
    return await node.store.count(mailbox)


async def test_smtplib_at_a_imaplib_at_b(pair: tuple[LabMail, LabMail]) -> None:
    a, b = pair
    assert a.service.submission_port and b.service.imap_port
    msg = _message(a.address, [b.address], "across the lab")
    await asyncio.to_thread(_submit, a.service.submission_port, a.address, msg, [b.address])
    await wait_for("the mail at B", lambda: _count(b), timeout=30)
    raws = await asyncio.to_thread(_imap_fetch_all, b.service.imap_port, b.address)
    assert len(raws) == 1
    got = email.message_from_bytes(raws[0], policy=default)
    assert got["Subject"] == "across the lab" and got["From"] == a.address
    received = str(got["Received"])
    assert f"[{a.node.address}]" in received and f"[{b.node.address}]" in received
    body = got.get_body(("plain",))
    assert body is not None
    assert body.get_content().replace("\r\n", "\n") == "Hello over the mesh.\n.dot line\n"
    att = next(got.iter_attachments())
    assert att.get_filename() == "data.bin" and att.get_content() == bytes(range(256)) * 64
    # Reply B → A, and B to itself in the same message.
    reply = _message(b.address, [a.address, b.address], "Re: across the lab")
    await asyncio.to_thread(
        _submit, b.service.submission_port, b.address, reply, [a.address, b.address]
    )
    await wait_for("the reply at A", lambda: _count(a), timeout=30)
    await wait_for("B's copy to itself", lambda: _count(b), timeout=30)
    await asyncio.sleep(0.5)
    assert await _count(b) == 2 and await _count(a) == 1
    assert await _count(b, "Sent") == 1


async def test_spoofing_and_relay_over_real_mesh(pair: tuple[LabMail, LabMail]) -> None:
    a, b = pair
    forged = "ab" * 32 + "@mesh"

    async def attempt(mail_from: str, rcpt: str) -> Any:
        reader, writer = await a.node.open_connection(b.node.address, MESH_SMTP_PORT)
        content = f"From: {mail_from}\r\nSubject: x\r\n\r\nx\r\n".encode()
        txn = ClientTransaction("[IPv6:x]", mail_from, [rcpt], content)
        return await run_transaction(txn, reader, writer, timeout=20)

    spoof = await attempt(forged, b.address)
    assert "550 5.7.1" in spoof.permanent[b.address]
    relay = await attempt(a.address, "cd" * 32 + "@mesh")
    assert "relaying denied" in relay.permanent["cd" * 32 + "@mesh"]
    assert await _count(b) == 0


async def test_recipient_offline_then_back(pair: tuple[LabMail, LabMail]) -> None:
    a, b = pair
    await b.service.close()
    msg = _message(a.address, [b.address], "while you were away")
    await asyncio.to_thread(_submit, a.service.submission_port, a.address, msg, [b.address])

    async def retried() -> bool:
        assert a.service.queue is not None
        pending = await a.service.queue.pending()
        return bool(pending) and pending[0].attempts >= 2

    await wait_for("A to retry", retried, timeout=30)
    await b.restart_service()
    await wait_for("the mail at B after it came back", lambda: _count(b), timeout=30)


async def test_recipient_daemon_down_then_back(lab: Lab, tmp_path: Path) -> None:
    """B's whole daemon goes away (no route to B at all) and comes back with a new TUN."""
    a = await LabMail.on_host(
        lab.hosts["a"], tmp_path / "a", retry_initial=0.5, retry_max=1, io_timeout=3
    )
    b = await LabMail.on_host(lab.hosts["b"], tmp_path / "b")
    hb = lab.hosts["b"]
    assert hb.daemon is not None and lab.hosts["a"].daemon is not None
    try:
        await asyncio.to_thread(hb.daemon.stop)  # blocking: keep the nodes' loop running
        msg = _message(a.address, [b.address], "while your daemon was down")
        await asyncio.to_thread(_submit, a.service.submission_port, a.address, msg, [b.address])

        async def retried() -> bool:
            assert a.service.queue is not None
            pending = await a.service.queue.pending()
            return bool(pending) and pending[0].attempts >= 2

        await wait_for("A to retry", retried, timeout=30)
        await asyncio.to_thread(hb.daemon.start)
        await asyncio.to_thread(lab.wait_peered, lab.hosts["a"].daemon, hb.daemon)
        await wait_for("the mail at B after its daemon came back", lambda: _count(b), timeout=60)
        assert await _count(b) == 1
    finally:
        if hb.daemon.proc is None:
            await asyncio.to_thread(hb.daemon.start)
            await asyncio.to_thread(lab.wait_peered, lab.hosts["a"].daemon, hb.daemon)
        await asyncio.wait_for(a.close(), 60)
        await asyncio.wait_for(b.close(), 60)


async def test_expiry_bounces_to_a(lab: Lab, tmp_path: Path) -> None:
    a = await LabMail.on_host(
        lab.hosts["a"], tmp_path / "a", retry_initial=0.3, retry_max=0.5, expire_after=2
    )
    b = await LabMail.on_host(lab.hosts["b"], tmp_path / "b")
    try:
        await b.service.close()  # B's node is up, nothing listens on the mail port
        msg = _message(a.address, [b.address], "will expire")
        await asyncio.to_thread(_submit, a.service.submission_port, a.address, msg, [b.address])
        await wait_for("the bounce at A", lambda: _count(a), timeout=30)
        assert a.service.imap_port
        raws = await asyncio.to_thread(_imap_fetch_all, a.service.imap_port, a.address)
        dsn = email.message_from_bytes(raws[0], policy=default)
        assert dsn.get_content_type() == "multipart/report"
        block = dsn.get_payload()[1].get_payload()[1]
        assert block["Status"] == "4.4.7" and block["Final-Recipient"] == f"rfc822; {b.address}"
    finally:
        await a.close()
        await b.node.close()


SENDER = textwrap.dedent(
    """
    import asyncio, signal, sys
    from pathlib import Path
    from core.config import NodeConfig
    from core.node import Node
    from apps.mail.service import create_service

    async def main() -> None:
        data = Path(sys.argv[1])
        node = await Node.open(NodeConfig(data_dir=data, backend="yggdrasil",
                                          admin_endpoint=sys.argv[2]))
        svc = create_service(node, {"smtp": "127.0.0.1:1025", "imap": "127.0.0.1:1143",
                                    "retry_initial": 0.3, "retry_max": 0.5}, data)
        await svc.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print("ready", flush=True)
        await stop.wait()
        await svc.close()
        await node.close()

    asyncio.run(main())
    """
)


class _NamespacedSMTP(smtplib.SMTP):
    """smtplib over a socket made inside a lab host (its 127.0.0.1 is not ours)."""

    def __init__(self, host: Host, port: int) -> None:
        self._lab_host = host
        super().__init__("127.0.0.1", port, local_hostname="localhost", timeout=30)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = self._lab_host.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect((host, port))
        return sock


def _start_sender(host: Host, data_dir: Path) -> subprocess.Popen[str]:
    assert host.daemon is not None
    proc = host.spawn("-c", SENDER, str(data_dir), host.daemon.admin)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        err = proc.stderr.read() if proc.stderr else ""
        _stop(proc, signal.SIGKILL)
        raise AssertionError(f"sender did not start: {line!r} {err}")
    return proc


def _stop(proc: subprocess.Popen[str], sig: int) -> None:
    """Signal, reap and close the pipes of a sender process."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def _submit_many(host: Host, user: str, to: str, count: int) -> list[str]:
    ids = []
    with _NamespacedSMTP(host, 1025) as smtp:
        smtp.login(user, PASSWORD)
        for i in range(count):
            msg = EmailMessage()
            msg["From"], msg["To"], msg["Subject"] = user, to, f"crash test {i}"
            msg["Message-ID"] = f"<crash-{i}@lab.mesh>"
            msg.set_content(f"mail number {i}\n" * 50)
            smtp.send_message(msg)
            ids.append(msg["Message-ID"])
    return ids


def _sent_count(data_dir: Path) -> int:
    db = sqlite3.connect(data_dir / MAIL_STORE_FILE_NAME)
    try:
        row = db.execute(
            "SELECT count(*) FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id "
            "WHERE b.name = 'Sent'"
        ).fetchone()
        return int(row[0])
    finally:
        db.close()


async def test_sigkill_mid_queue_every_mail_arrives_once(lab: Lab, tmp_path: Path) -> None:
    host_a = lab.hosts["a"]
    assert host_a.daemon is not None
    # B accepts a burst, then 450s (rate limit) so A's queue is surely mid-way when killed.
    b = await LabMail.on_host(lab.hosts["b"], tmp_path / "b", rate_burst=10, rate_per_minute=300)
    a_dir = tmp_path / "a"
    a_dir.mkdir()
    set_password(a_dir, PASSWORD)
    a_address = f"{host_a.daemon.key}@mesh"
    count = 60
    proc = _start_sender(host_a, a_dir)
    try:
        ids = await asyncio.to_thread(_submit_many, host_a, a_address, b.address, count)
        await wait_for("some mail at B", lambda: _count(b), timeout=30)
        _stop(proc, signal.SIGKILL)
        killed_at = await _count(b)
        assert killed_at < count, "the queue had drained before the kill; nothing was tested"
        proc = _start_sender(host_a, a_dir)

        async def all_in() -> bool:
            return await _count(b) >= count

        await wait_for("every mail at B", all_in, timeout=60)
        await asyncio.sleep(1.0)  # any duplicate would land now
        uids = await b.store.list_uids("INBOX")
        got = []
        for uid in uids:
            raw = await b.store.fetch_raw("INBOX", uid)
            assert raw is not None
            got.append(str(email.message_from_bytes(raw, policy=default)["Message-ID"]))
        assert sorted(got) == sorted(ids)  # each exactly once
        _stop(proc, signal.SIGTERM)
        assert proc.returncode == 0
        assert _sent_count(a_dir) == count
    finally:
        _stop(proc, signal.SIGKILL)
        await b.close()
