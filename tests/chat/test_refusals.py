"""Every refusal shown by a real third node (an embedded node with no chat service,
writing its own frames to B's chat port): the right reason comes back, nothing is
stored, and B keeps serving."""

from __future__ import annotations

import asyncio
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from apps.chat.checks import Refusal
from apps.chat.connection import AckReceived, ChatConnection, RemoteError
from apps.chat.envelope import Envelope, Kind
from apps.chat.wire import MAX_PAYLOAD, FrameType, encode_frame
from core.identity import Identity
from core.node import Node
from tests.chat.nodes import ChatNet, ChatNode, settle

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(180)]


class Intruder:
    """Node C: raw chat frames to B over a real mesh stream."""

    def __init__(self, node: Node, identity: Identity, target: ChatNode) -> None:
        self.node, self.identity, self.target = node, identity, target

    def envelope(self, **kw: Any) -> Envelope:
        signer: Identity = kw.pop("signer", self.identity)
        args: dict[str, Any] = {
            "sender": self.identity.public_key,
            "signer": signer.public_key,
            "recipient": self.target.key,
            "sent_ms": int(time.time() * 1000),
            "body": b"knock knock",
            "sign": signer.sign,
        }
        args.update(kw)
        return Envelope.build(Kind.TEXT, **args)

    async def send_raw(self, data: bytes, conn: ChatConnection | None = None) -> list[Any]:
        """Write bytes on a new stream; the events B answered with before closing/idle."""
        conn = conn or ChatConnection()
        reader, writer = await self.node.open_connection(self.target.node.address, 5310)
        writer.write(data)
        await writer.drain()
        events: list[Any] = []
        try:
            while not events:
                chunk = await asyncio.wait_for(reader.read(65536), 10)
                if not chunk:
                    break
                events.extend(conn.receive_data(chunk))
        finally:
            writer.close()
        return events

    async def send(self, env: Envelope) -> tuple[Refusal, str]:
        conn = ChatConnection()
        events = await self.send_raw(conn.send_envelope(bytes(env), env.id), conn)
        ack = next(e.ack for e in events if isinstance(e, AckReceived))
        return Refusal(ack.code), ack.reason


async def _setup(net: ChatNet) -> tuple[ChatNode, ChatNode, Intruder]:
    a, b = await net.start(), await net.start()
    c_node = await net.plain()
    assert c_node.identity is not None
    return a, b, Intruder(c_node, c_node.identity, b)


async def stored_at(b: ChatNode) -> int:
    rows = await b.chat.db._all("SELECT COUNT(*) FROM messages")
    return int(rows[0][0])


async def test_each_forgery_is_refused_with_its_reason_and_nothing_is_stored(
    tmp_path: Path,
) -> None:
    async with ChatNet(tmp_path) as net:
        a, b, c = await _setup(net)
        a_identity = a.node.identity
        assert a_identity is not None
        cases = [
            # claims to be A (and even carries A's real signature): the source is C
            (c.envelope(sender=a.key, signer=a_identity), Refusal.FORGED_SENDER),
            (c.envelope().with_signature(bytes(64)), Refusal.BAD_SIGNATURE),
            (c.envelope(recipient=a.key), Refusal.NOT_FOR_ME),
            (c.envelope(sent_ms=0), Refusal.NO_TIMESTAMP),
            (c.envelope(sent_ms=int((time.time() - 40 * 86400) * 1000)), Refusal.STALE),
            (c.envelope(sent_ms=int((time.time() + 3600) * 1000)), Refusal.STALE),
        ]
        for env, refusal in cases:
            got, reason = await c.send(env)
            assert got is refusal, (refusal, got, reason)
            assert reason
        assert await stored_at(b) == 0
        assert b.chat.refused[Refusal.FORGED_SENDER.label] == 1
        forged = (await b.call("chat.security"))["records"]
        assert [r["kind"] for r in forged] == ["forged-sender"]
        # B still serves: a good message from C is accepted and stored
        assert (await c.send(c.envelope(body=b"hello")))[0] is Refusal.OK
        assert await stored_at(b) == 1


async def test_replayed_frame_is_refused_and_stored_once(tmp_path: Path) -> None:
    async with ChatNet(tmp_path) as net:
        _, b, c = await _setup(net)
        env = c.envelope(body=b"once")
        assert (await c.send(env))[0] is Refusal.OK
        assert (await c.send(env))[0] is Refusal.REPLAY
        assert await stored_at(b) == 1


async def test_rekeyed_sender_is_refused_and_recorded_as_a_security_event(
    tmp_path: Path,
) -> None:
    async with ChatNet(tmp_path) as net:
        _, b, c = await _setup(net)
        first, second = Identity.generate(), Identity.generate()
        assert (await c.send(c.envelope(signer=first)))[0] is Refusal.OK  # pinned now
        assert (await c.send(c.envelope(signer=first)))[0] is Refusal.OK
        got, reason = await c.send(c.envelope(signer=second, body=b"new key, who dis"))
        assert got is Refusal.KEY_CHANGED and first.public_key.hex() in reason
        assert await stored_at(b) == 2
        records = (await b.call("chat.security"))["records"]
        assert [(r["kind"], r["key"]) for r in records] == [
            ("key-changed", c.identity.public_key.hex())
        ]
        await settle("security event", lambda: b.seen("chat.security"))
        await b.call("chat.security.ack", id=records[0]["id"])
        assert (await b.call("chat.security"))["records"][0]["acknowledged"] is True


async def test_oversize_and_garbage_streams_are_refused_and_b_stays_up(
    tmp_path: Path,
) -> None:
    async with ChatNet(tmp_path) as net:
        _, b, c = await _setup(net)
        oversize = struct.pack(">BBI", 1, int(FrameType.ENVELOPE), MAX_PAYLOAD + 1)
        events = await c.send_raw(oversize + b"x" * 1000)
        assert isinstance(events[0], RemoteError)
        assert events[0].error.code == Refusal.OVERSIZE

        events = await c.send_raw(b"\x16\x03\x01 this is not chat at all")
        assert isinstance(events[0], RemoteError)
        assert events[0].error.code == Refusal.BAD_VERSION

        conn = ChatConnection()
        conn.send_envelope(b"", bytes(16))  # one answer expected
        events = await c.send_raw(encode_frame(FrameType.ENVELOPE, b"\x01garbage"), conn)
        assert isinstance(events[0], AckReceived)
        assert events[0].ack.code == Refusal.MALFORMED
        assert await stored_at(b) == 0
        assert (await c.send(c.envelope()))[0] is Refusal.OK


async def test_a_flooding_sender_is_slowed_and_others_still_get_through(
    tmp_path: Path,
) -> None:
    async with ChatNet(tmp_path) as net:
        a = await net.start()
        b = await net.start(rate_burst=20, rate_per_minute=60, conns_per_peer=2)
        c_node = await net.plain()
        assert c_node.identity is not None
        c = Intruder(c_node, c_node.identity, b)
        # 100 envelopes pipelined on one stream: the first 20 pass, the rest are told
        # to slow down (a temporary refusal: a real sender retries them later).
        conn = ChatConnection()
        flood = [c.envelope(body=f"flood {i}".encode()) for i in range(100)]
        wire = b"".join(conn.send_envelope(bytes(e), e.id) for e in flood)
        reader, writer = await c_node.open_connection(b.node.address, 5310)
        writer.write(wire)
        acks: list[Any] = []
        while len(acks) < 100:
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            assert chunk, "B closed the stream"
            acks.extend(e.ack for e in conn.receive_data(chunk) if isinstance(e, AckReceived))
        codes = [Refusal(x.code) for x in acks]
        assert codes.count(Refusal.OK) <= 21 and codes.count(Refusal.RATE_LIMITED) >= 79
        # Meanwhile the streams C may hold are capped: a third one is closed at once.
        extra = [await c_node.open_connection(b.node.address, 5310) for _ in range(2)]
        assert await asyncio.wait_for(extra[-1][0].read(10), 10) == b""
        for _, w in extra:
            w.close()
        writer.close()
        sent = await a.call("chat.send", contact=b.key.hex(), body="still here")

        async def arrived() -> bool:
            got = (await b.call("chat.history", contact=a.key.hex()))["messages"]
            return [m["id"] for m in got] == [sent["id"]]

        await settle("A's message at B", arrived)
        assert await stored_at(b) == codes.count(Refusal.OK) + 1
