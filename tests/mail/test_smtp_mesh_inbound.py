"""Mesh SMTP inbound between real embedded nodes in this process: sender verification,
no relay, limits, de-duplication, Received:, garbage. The same checks run over real
daemons in ``test_mail_e2e_lab.py``.

The nodes (sender A, receiver B, a third node C) are the run's shared ones; each test
gets a fresh store and handler on B behind its own mesh port."""

from __future__ import annotations

import asyncio
import email
import itertools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email.policy import default
from pathlib import Path

import pytest
import pytest_asyncio
from aiosmtpd.smtp import SMTP

from apps.mail.config import MESH_SMTP_PORT
from apps.mail.inbound import MeshInboundHandler
from apps.mail.smtp_client import ClientTransaction, Reply, ReplyParser, run_transaction
from apps.mail.smtp_server import MeshSMTP
from apps.mail.store import MailStore
from core import ConnectionLimiter, PeerRateLimiter
from core.node import MeshServer, Node
from tests.mail.helpers import on_shared_mesh


@dataclass
class Receiver:
    node: Node
    store: MailStore
    handler: MeshInboundHandler
    events: list[object]
    port: int
    servers: list[MeshServer] = field(default_factory=list)


@pytest.fixture(scope="module")
def ports() -> Iterator[int]:
    """A fresh mesh port on B per server: B outlives every test's servers."""
    return itertools.count(MESH_SMTP_PORT)


@pytest_asyncio.fixture(loop_scope="session")
async def receiver(
    mesh_nodes: list[Node], ports: Iterator[int], tmp_path: Path
) -> AsyncIterator[Receiver]:
    node = mesh_nodes[1]
    store = await MailStore.open(tmp_path / "b" / "mail.db")
    events: list[object] = []
    handler = MeshInboundHandler(
        own=node.mail_address,
        sink=store,
        limiter=PeerRateLimiter(burst=5, per_minute=1),
        publish=events.append,
    )
    loop = asyncio.get_running_loop()
    port = next(ports)
    server = await node.create_server(
        lambda: SMTP(handler, hostname="b", data_size_limit=4096, loop=loop), port
    )
    receiver = Receiver(node, store, handler, events, port, [server])
    try:
        yield receiver
    finally:
        for server in receiver.servers:
            server.close()
            await server.wait_closed()
        await store.close()


@pytest.fixture
def sender(mesh_nodes: list[Node]) -> Node:
    return mesh_nodes[0]


@pytest.fixture
def third(mesh_nodes: list[Node]) -> Node:
    """A real node whose key is neither the sender's nor the receiver's."""
    return mesh_nodes[2]


def _mail(frm: str, to: str, mid: str = "<m1@a.mesh>", body: str = "hello") -> bytes:
    return (
        f"From: {frm}\r\nTo: {to}\r\nSubject: test\r\nMessage-ID: {mid}\r\n\r\n{body}\r\n"
    ).encode()


async def _send(node: Node, to: Receiver, mail_from: str, content: bytes, rcpt: str | None = None):
    reader, writer = await node.open_connection(to.node.address, to.port)
    txn = ClientTransaction("[IPv6:x]", mail_from, [rcpt or str(to.node.mail_address)], content)
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


@on_shared_mesh
async def test_delivery_stores_with_received_and_event(receiver: Receiver, sender: Node) -> None:
    a, b = sender, receiver.node
    outcome = await _send(
        a, receiver, str(a.mail_address), _mail(str(a.mail_address), str(b.mail_address))
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


@on_shared_mesh
async def test_duplicate_gets_250_but_is_stored_once(receiver: Receiver, sender: Node) -> None:
    a, b = sender, receiver.node
    content = _mail(str(a.mail_address), str(b.mail_address), mid="<same@a>")
    for _ in range(3):
        outcome = await _send(a, receiver, str(a.mail_address), content)
        assert outcome.delivered == [str(b.mail_address)]
    assert await receiver.store.count("INBOX") == 1


@on_shared_mesh
async def test_spoofed_sender_is_refused(
    receiver: Receiver, sender: Node, third: Node, caplog: pytest.LogCaptureFixture
) -> None:
    """A claims to be C, a real node on the mesh: B sees A's key on the session."""
    a, b, victim = sender, receiver.node, third
    assert victim.key != a.key
    forged = str(victim.mail_address)
    outcome = await _send(a, receiver, forged, _mail(forged, str(b.mail_address)))
    assert not outcome.delivered
    assert "550 5.7.1" in outcome.permanent[str(b.mail_address)]
    assert await receiver.store.count("INBOX") == 0
    assert any("refused MAIL FROM" in r.getMessage() for r in caplog.records)


@on_shared_mesh
async def test_header_from_must_match_envelope(receiver: Receiver, sender: Node) -> None:
    a, b = sender, receiver.node
    content = _mail("boss@mesh", str(b.mail_address))
    outcome = await _send(a, receiver, str(a.mail_address), content)
    assert "550 5.7.1" in outcome.permanent[str(b.mail_address)]
    assert await receiver.store.count("INBOX") == 0


@on_shared_mesh
async def test_relay_is_refused(receiver: Receiver, sender: Node, third: Node) -> None:
    a = sender
    own = str(a.mail_address)
    outcome = await _send(a, receiver, own, _mail(own, "x"), str(third.mail_address))
    outcome2 = await _send(a, receiver, own, _mail(own, "x"), "someone@example.com")
    assert "550 5.7.1 relaying denied" in outcome.permanent[str(third.mail_address)]
    assert "550" in outcome2.permanent["someone@example.com"]


@on_shared_mesh
async def test_oversize_is_552(receiver: Receiver, sender: Node) -> None:
    a, b = sender, receiver.node
    big = _mail(str(a.mail_address), str(b.mail_address), body="x" * 70 + ("\r\n" + "y" * 70) * 80)
    outcome = await _send(a, receiver, str(a.mail_address), big)
    assert "552" in outcome.permanent[str(b.mail_address)]
    # Also when the client does not announce SIZE: the server cuts it at DATA.
    reader, writer = await a.open_connection(b.address, receiver.port)
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


@on_shared_mesh
async def test_garbage_gets_errors_and_the_server_lives(receiver: Receiver, sender: Node) -> None:
    a, b = sender, receiver.node
    reader, writer = await a.open_connection(b.address, receiver.port)
    d = Dialogue(reader, writer)
    assert (await d.reply()).code == 220
    for junk in (b"\xff\xfe\x00garbage", b"GET / HTTP/1.1", b"x" * 3000, b"MAIL FROM:<>", b"DATA"):
        assert (await d.cmd(junk)).code >= 500
    assert (await d.cmd(b"AUTH PLAIN AHgAeA==")).code >= 500  # no AUTH on the mesh side
    assert (await d.cmd(b"NOOP")).code == 250
    writer.close()
    # and a proper delivery still works afterwards
    outcome = await _send(
        a, receiver, str(a.mail_address), _mail(str(a.mail_address), str(b.mail_address))
    )
    assert outcome.delivered


@on_shared_mesh
async def test_rate_limit_per_peer(receiver: Receiver, sender: Node) -> None:
    a, b = sender, receiver.node
    replies = []
    for i in range(7):
        content = _mail(str(a.mail_address), str(b.mail_address), mid=f"<r{i}@a>")
        outcome = await _send(a, receiver, str(a.mail_address), content)
        replies.append(outcome)
    assert sum(1 for o in replies if o.delivered) == 5  # the burst
    assert all("450 4.7.1" in o.temporary[str(b.mail_address)] for o in replies[5:])
    assert await receiver.store.count("INBOX") == 5


def test_rate_limiter_is_bounded_and_refills() -> None:
    now = [0.0]
    limiter = PeerRateLimiter(burst=2, per_minute=60, max_peers=3, clock=lambda: now[0])
    assert limiter.allow("p") and limiter.allow("p") and not limiter.allow("p")
    now[0] += 1.0
    assert limiter.allow("p") and not limiter.allow("p")
    for peer in "abcdef":
        limiter.allow(peer)
    assert len(limiter) == 3


@on_shared_mesh
async def test_connection_limits_per_peer(
    receiver: Receiver, sender: Node, ports: Iterator[int]
) -> None:
    a, b = sender, receiver.node
    loop = asyncio.get_running_loop()
    limiter = ConnectionLimiter(per_peer=2, total=10)
    port = next(ports)
    server = await b.create_server(
        lambda: MeshSMTP(receiver.handler, limiter=limiter, hostname="b", loop=loop), port
    )
    receiver.servers.append(server)
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
