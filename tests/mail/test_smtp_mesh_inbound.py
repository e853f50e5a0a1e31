"""Mesh SMTP inbound on real nodes (loopback carrier): sender verification, no relay,
limits, de-duplication, Received:, garbage. The same checks run over real daemons in
``test_mail_e2e_lab.py``."""

from __future__ import annotations

import asyncio
import email
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.policy import default
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP

from apps.mail.config import MESH_SMTP_PORT
from apps.mail.inbound import MeshInboundHandler, RateLimiter
from apps.mail.smtp_client import ClientTransaction, Reply, ReplyParser, run_transaction
from apps.mail.smtp_server import ConnectionLimiter, MeshSMTP
from apps.mail.store import MailStore
from core.node import Node
from tests.mail.test_smtp_loopmesh import LoopbackMesh


@dataclass
class Receiver:
    node: Node
    store: MailStore
    handler: MeshInboundHandler
    events: list[object]


@pytest.fixture
async def mesh() -> LoopbackMesh:
    return LoopbackMesh()


@pytest.fixture
async def receiver(mesh: LoopbackMesh, tmp_path: Path) -> AsyncIterator[Receiver]:
    node = await mesh.node(tmp_path / "b")
    store = await MailStore.open(tmp_path / "b" / "mail.db")
    events: list[object] = []
    handler = MeshInboundHandler(
        own=node.mail_address,
        sink=store,
        limiter=RateLimiter(burst=5, per_minute=1),
        publish=events.append,
    )
    loop = asyncio.get_running_loop()
    await node.create_server(
        lambda: SMTP(handler, hostname="b", data_size_limit=4096, loop=loop), MESH_SMTP_PORT
    )
    try:
        yield Receiver(node, store, handler, events)
    finally:
        await node.close()
        await store.close()


@pytest.fixture
async def sender(mesh: LoopbackMesh, tmp_path: Path) -> AsyncIterator[Node]:
    node = await mesh.node(tmp_path / "a")
    try:
        yield node
    finally:
        await node.close()


def _mail(frm: str, to: str, mid: str = "<m1@a.mesh>", body: str = "hello") -> bytes:
    return (
        f"From: {frm}\r\nTo: {to}\r\nSubject: test\r\nMessage-ID: {mid}\r\n\r\n{body}\r\n"
    ).encode()


async def _send(node: Node, to: Node, mail_from: str, content: bytes, rcpt: str | None = None):
    reader, writer = await node.open_connection(to.address, MESH_SMTP_PORT)
    txn = ClientTransaction("[IPv6:x]", mail_from, [rcpt or str(to.mail_address)], content)
    return await run_transaction(txn, reader, writer, timeout=10)


class Dialogue:
    """Raw command/reply exchange over a mesh stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.parser = reader, writer, ReplyParser()
        self.pending: list[Reply] = []

    async def reply(self) -> Reply:
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(4096), 10)
            assert data, "server closed the connection"
            self.pending += self.parser.feed(data)
        return self.pending.pop(0)

    async def cmd(self, line: bytes) -> Reply:
        self.writer.write(line + b"\r\n")
        return await self.reply()


async def test_delivery_stores_with_received_and_event(receiver: Receiver, sender: Node) -> None:
    a, b = sender, receiver.node
    outcome = await _send(
        a, b, str(a.mail_address), _mail(str(a.mail_address), str(b.mail_address))
    )
    assert outcome.delivered == [str(b.mail_address)], outcome
    uids = await receiver.store.list_uids("INBOX")
    assert len(uids) == 1
    raw = await receiver.store.fetch_raw("INBOX", uids[0])
    assert raw is not None
    msg = email.message_from_bytes(raw, policy=default)
    received = str(msg["Received"])
    assert f"[{a.address}]" in received and f"[{b.address}]" in received
    assert a.key.hex() in received
    assert msg.get_content().strip() == "hello"
    assert receiver.events and receiver.events[0].kind == "mail.new"  # type: ignore[attr-defined]


async def test_duplicate_gets_250_but_is_stored_once(receiver: Receiver, sender: Node) -> None:
    a, b = sender, receiver.node
    content = _mail(str(a.mail_address), str(b.mail_address), mid="<same@a>")
    for _ in range(3):
        outcome = await _send(a, b, str(a.mail_address), content)
        assert outcome.delivered == [str(b.mail_address)]
    assert await receiver.store.count("INBOX") == 1


async def test_spoofed_sender_is_refused(
    receiver: Receiver, sender: Node, mesh: LoopbackMesh, tmp_path: Path, caplog
) -> None:
    a, b = sender, receiver.node
    victim = await mesh.node(tmp_path / "c")
    try:
        forged = str(victim.mail_address)
        outcome = await _send(a, b, forged, _mail(forged, str(b.mail_address)))
    finally:
        await victim.close()
    assert not outcome.delivered
    assert "550 5.7.1" in outcome.permanent[str(b.mail_address)]
    assert await receiver.store.count("INBOX") == 0
    assert any("refused MAIL FROM" in r.getMessage() for r in caplog.records)


async def test_header_from_must_match_envelope(receiver: Receiver, sender: Node) -> None:
    a, b = sender, receiver.node
    content = _mail("boss@mesh", str(b.mail_address))
    outcome = await _send(a, b, str(a.mail_address), content)
    assert "550 5.7.1" in outcome.permanent[str(b.mail_address)]
    assert await receiver.store.count("INBOX") == 0


async def test_relay_is_refused(
    receiver: Receiver, sender: Node, mesh: LoopbackMesh, tmp_path: Path
) -> None:
    a, b = sender, receiver.node
    third = await mesh.node(tmp_path / "c")
    try:
        outcome = await _send(
            a, b, str(a.mail_address), _mail(str(a.mail_address), "x"), str(third.mail_address)
        )
        outcome2 = await _send(
            a, b, str(a.mail_address), _mail(str(a.mail_address), "x"), "someone@example.com"
        )
    finally:
        await third.close()
    assert "550 5.7.1 relaying denied" in outcome.permanent[str(third.mail_address)]
    assert "550" in outcome2.permanent["someone@example.com"]


async def test_oversize_is_552(receiver: Receiver, sender: Node) -> None:
    a, b = sender, receiver.node
    big = _mail(str(a.mail_address), str(b.mail_address), body="x" * 70 + ("\r\n" + "y" * 70) * 80)
    outcome = await _send(a, b, str(a.mail_address), big)
    assert "552" in outcome.permanent[str(b.mail_address)]
    # Also when the client does not announce SIZE: the server cuts it at DATA.
    reader, writer = await a.open_connection(b.address, MESH_SMTP_PORT)
    d = Dialogue(reader, writer)
    assert (await d.reply()).code == 220
    assert (await d.cmd(b"HELO x")).code == 250
    assert (await d.cmd(f"MAIL FROM:<{a.mail_address}>".encode())).code == 250
    assert (await d.cmd(f"RCPT TO:<{b.mail_address}>".encode())).code == 250
    assert (await d.cmd(b"DATA")).code == 354
    writer.write(big + b".\r\n")
    assert (await d.reply()).code == 552
    writer.close()
    assert await receiver.store.count("INBOX") == 0


async def test_garbage_gets_errors_and_the_server_lives(receiver: Receiver, sender: Node) -> None:
    a, b = sender, receiver.node
    reader, writer = await a.open_connection(b.address, MESH_SMTP_PORT)
    d = Dialogue(reader, writer)
    assert (await d.reply()).code == 220
    for junk in (b"\xff\xfe\x00garbage", b"GET / HTTP/1.1", b"x" * 3000, b"MAIL FROM:<>", b"DATA"):
        assert (await d.cmd(junk)).code >= 500
    assert (await d.cmd(b"AUTH PLAIN AHgAeA==")).code >= 500  # no AUTH on the mesh side
    assert (await d.cmd(b"NOOP")).code == 250
    writer.close()
    # and a proper delivery still works afterwards
    outcome = await _send(
        a, b, str(a.mail_address), _mail(str(a.mail_address), str(b.mail_address))
    )
    assert outcome.delivered


async def test_rate_limit_per_peer(receiver: Receiver, sender: Node) -> None:
    a, b = sender, receiver.node
    replies = []
    for i in range(7):
        content = _mail(str(a.mail_address), str(b.mail_address), mid=f"<r{i}@a>")
        outcome = await _send(a, b, str(a.mail_address), content)
        replies.append(outcome)
    assert sum(1 for o in replies if o.delivered) == 5  # the burst
    assert all("450 4.7.1" in o.temporary[str(b.mail_address)] for o in replies[5:])
    assert await receiver.store.count("INBOX") == 5


def test_rate_limiter_is_bounded_and_refills() -> None:
    now = [0.0]
    limiter = RateLimiter(burst=2, per_minute=60, max_peers=3, clock=lambda: now[0])
    assert limiter.take("p") and limiter.take("p") and not limiter.take("p")
    now[0] += 1.0
    assert limiter.take("p") and not limiter.take("p")
    for peer in "abcdef":
        limiter.take(peer)
    assert len(limiter) == 3


async def test_connection_limits_per_peer(receiver: Receiver, sender: Node) -> None:
    a, b = sender, receiver.node
    loop = asyncio.get_running_loop()
    limiter = ConnectionLimiter(per_peer=2, total=10)
    port = MESH_SMTP_PORT + 1
    await b.create_server(
        lambda: MeshSMTP(receiver.handler, limiter=limiter, hostname="b", loop=loop), port
    )
    dialogues = []
    for _ in range(2):
        reader, writer = await a.open_connection(b.address, port)
        d = Dialogue(reader, writer)
        assert (await d.reply()).code == 220
        dialogues.append(d)
    reader, writer = await a.open_connection(b.address, port)
    refused = Dialogue(reader, writer)
    assert (await refused.reply()).code == 421
    assert await asyncio.wait_for(reader.read(), 5) == b""  # and closed
    writer.close()
    assert limiter.open == 2
    dialogues[0].writer.close()
    await wait_for_open(limiter, 1)
    reader, writer = await a.open_connection(b.address, port)
    assert (await Dialogue(reader, writer).reply()).code == 220
    writer.close()
    dialogues[1].writer.close()
    await wait_for_open(limiter, 0)


async def wait_for_open(limiter: ConnectionLimiter, count: int) -> None:
    for _ in range(200):
        if limiter.open == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{limiter.open} connections open, expected {count}")
