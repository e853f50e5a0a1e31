"""The privacy rule under attack, and signaling garbage on the wire: refused, the node
keeps taking calls."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aioice import Candidate

from apps.video import signaling as sig
from apps.video.ice import MeshIceConnection
from tests.video.helpers import connect, method, trusted_pair
from tests.video.mesh import CallMesh, exchange_and_connect
from tests.video.sdp_samples import offer

pytestmark = pytest.mark.timeout(90)


class _Counting(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[tuple[bytes, Any]] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append((data, addr))


async def test_a_forged_remote_candidate_is_never_contacted(tmp_path: Path) -> None:
    async with CallMesh(tmp_path) as mesh:
        a, b, c = await mesh.open(3)
        trap = _Counting()
        transport, _ = await c.create_datagram_endpoint(lambda: trap, local_port=40404)
        ca = MeshIceConnection(a, b.address, ice_controlling=True)
        cb = MeshIceConnection(b, a.address, ice_controlling=False)
        await asyncio.gather(ca.gather_candidates(), cb.gather_candidates())
        # The forged candidate sits on another mesh node and outranks the real one.
        forged = Candidate("f", 1, "udp", 2**31 - 1, str(c.address), 40404, "host")
        await ca.add_remote_candidate(forged)
        await exchange_and_connect(ca, cb)
        await ca.send(b"media")
        assert await asyncio.wait_for(cb.recv(), 5) == b"media"
        await asyncio.sleep(0.5)
        await asyncio.gather(ca.close(), cb.close())
        transport.close()
    assert trap.received == []
    assert ca.counters.dropped_candidates == [f"{c.address} 40404"]


async def _raw_stream(node: Any, target: Any, payload: bytes) -> bytes:
    reader, writer = await node.open_connection(target.address, sig.SIGNALING_PORT)
    writer.write(payload)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(65536), 12)
    finally:
        writer.close()


CALL_ID = "ab" * 16


def _frame(**fields: Any) -> bytes:
    return json.dumps({"v": 1, "call": CALL_ID, **fields}).encode() + b"\n"


@pytest.mark.timeout(150)
async def test_fuzzed_signaling_and_mangled_sdp_are_refused_and_calls_still_work(
    tmp_path: Path,
) -> None:
    async with trusted_pair(tmp_path) as (pa, pb):
        a, b = pa.node, pb.node
        good = offer(host=str(a.address))
        attacks = [
            b"\x00\xff garbage\n",
            b"{" * (sig.MAX_FRAME_BYTES + 10),
            _frame(type="ringing"),  # a caller that does not call
            _frame(type="call", sdp="v=0\r\nbogus", media=["audio"]),
            _frame(type="call", sdp=good.replace("a=ice-pwd", "a=x"), media=["audio", "video"]),
            _frame(type="call", sdp=offer(host="10.1.2.3"), media=["audio", "video"]),
            _frame(type="call", sdp=good, media=["audio"]),  # media disagree with SDP
            _frame(v=7, type="call", sdp=good, media=["audio", "video"]),
        ]
        for payload in attacks:
            reply = await _raw_stream(a, b, payload)
            assert b'"type":"hangup"' in reply and b'"reason":"failed"' in reply, payload[:40]
        assert pb.service.refused_frames == len(attacks)
        assert "call.incoming" not in pb.kinds()
        # ... and a real call still goes through.
        await connect(pa, pb, audio_only=True)
        await method(pa, "call.hangup")
        assert (await pa.wait_event("call.ended"))["result"] == "answered"
