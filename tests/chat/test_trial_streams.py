"""Trial finding F3: a new stream to the chat port must bring its first frame within
``first_frame_timeout``, so a third node's silent (or trickling) streams cannot hold
the per-peer connection slots for the idle timeout."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from apps.chat.checks import Refusal
from apps.chat.config import ChatConfig
from apps.chat.connection import AckReceived, ChatConnection
from apps.chat.wire import FrameType
from core import UsageError
from tests.chat.nodes import ChatNet
from tests.chat.test_refusals import Intruder

pytestmark = pytest.mark.timeout(120)


async def _ack(reader: asyncio.StreamReader, conn: ChatConnection) -> Refusal:
    while True:
        chunk = await asyncio.wait_for(reader.read(65536), 10)
        assert chunk, "B closed the stream"
        for event in conn.receive_data(chunk):
            if isinstance(event, AckReceived):
                return Refusal(event.ack.code)


@pytest.mark.asyncio
async def test_silent_streams_are_closed_at_the_first_frame_deadline(tmp_path: Path) -> None:
    async with ChatNet(tmp_path) as net:
        b = await net.start(first_frame_timeout=1.5, conns_per_peer=2, idle_timeout=300)
        c_node = await net.plain()
        assert c_node.identity is not None
        c = Intruder(c_node, c_node.identity, b)
        opened = time.monotonic()
        silent = await c_node.open_connection(b.node.address, 5310)
        trickle = await c_node.open_connection(b.node.address, 5310)
        trickle[1].write(bytes([1, int(FrameType.ENVELOPE)]))  # half a frame header, then no more
        await trickle[1].drain()
        # both of C's slots are held now: a third stream is turned away at once
        third = await c_node.open_connection(b.node.address, 5310)
        assert await asyncio.wait_for(third[0].read(10), 10) == b""
        third[1].close()
        for reader, writer in (silent, trickle):
            assert await asyncio.wait_for(reader.read(10), 10) == b""  # closed by B
            writer.close()
        took = time.monotonic() - opened
        assert 1.0 < took < 6.0, took
        assert (await b.call("chat.info"))["refused"]["first-frame-timeout"] == 2
        # the slots are free again: C's real message gets through
        got, reason = await c.send(c.envelope(body=b"a real message"))
        assert got is Refusal.OK, reason
        history = await b.call("chat.history", contact=c_node.key.hex())
        assert [m["body"] for m in history["messages"]] == ["a real message"]


@pytest.mark.asyncio
async def test_a_stream_that_sent_its_first_frame_may_stay_quiet_longer(tmp_path: Path) -> None:
    async with ChatNet(tmp_path) as net:
        b = await net.start(first_frame_timeout=1.0)
        c_node = await net.plain()
        assert c_node.identity is not None
        c = Intruder(c_node, c_node.identity, b)
        conn = ChatConnection()
        reader, writer = await c_node.open_connection(b.node.address, 5310)
        try:
            env = c.envelope(body=b"first")
            writer.write(conn.send_envelope(bytes(env), env.id))
            assert await _ack(reader, conn) is Refusal.OK
            await asyncio.sleep(2.5)  # past the first-frame deadline: still open
            env = c.envelope(body=b"second")
            writer.write(conn.send_envelope(bytes(env), env.id))
            assert await _ack(reader, conn) is Refusal.OK
        finally:
            writer.close()


def test_first_frame_timeout_must_be_positive() -> None:
    assert ChatConfig.from_mapping({"first_frame_timeout": 3}).first_frame_timeout == 3.0
    with pytest.raises(UsageError, match="first_frame_timeout must be > 0"):
        ChatConfig.from_mapping({"first_frame_timeout": 0})
