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
from apps.video.call import CallOptions
from apps.video.ice import MeshIceConnection
from tests.video.helpers import connect, method, trusted_pair
from tests.video.mesh import CallMesh, eventually, exchange_and_connect
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


@pytest.mark.timeout(120)
async def test_bad_offers_from_a_contact_are_logged_five_times_a_minute_and_move_no_ui(
    tmp_path: Path,
) -> None:
    async with trusted_pair(tmp_path) as (pa, pb):
        a, b = pa.node, pb.node
        for i in range(8):
            bad = {"v": 1, "call": f"{i:032x}", "type": "call", "sdp": "v=0\r\nbogus"}
            bad["media"] = ["audio"]
            reply = await _raw_stream(a, b, json.dumps(bad).encode() + b"\n")
            assert b'"reason":"failed"' in reply
        assert pb.service.refused_frames == 8

        async def five_logged() -> bool:  # a row is written after the reply went out
            return len(await method(pb, "call.log")) == 5

        await eventually("five rows in the call log", five_logged)
        await asyncio.sleep(0.5)  # and no more come
        assert len(await method(pb, "call.log")) == 5
        assert "call.state" not in pb.kinds() and "call.incoming" not in pb.kinds()


@pytest.mark.timeout(150)
async def test_a_contact_ringing_again_and_again_unanswered_gets_busy_after_three(
    tmp_path: Path,
) -> None:
    async with trusted_pair(tmp_path) as (pa, pb):
        for _ in range(3):  # ring, give up, ring again...
            await pa.service.place(pb.node.key.hex(), CallOptions(audio_only=True))
            await pb.wait_event("call.incoming")
            pb.events.clear()
            await method(pa, "call.hangup")
            await eventually("missed", lambda: pb.service.current() is None, timeout=10)
        await pa.service.place(pb.node.key.hex(), CallOptions(audio_only=True))
        await eventually("refused", lambda: pa.service.current() is None, timeout=10)
        assert pa.ended()[-1]["result"] == "busy"
        assert "call.incoming" not in pb.kinds()
        # An answered call is not one of those: B calling A is untouched.
        await connect(pb, pa, audio_only=True)
        await method(pb, "call.hangup")


@pytest.mark.timeout(120)
async def test_a_flood_of_update_frames_is_a_handful_of_events_and_the_last_state_shows(
    tmp_path: Path,
) -> None:
    async with trusted_pair(tmp_path) as (pa, pb):
        await connect(pa, pb, audio_only=True)
        pb.events.clear()
        for i in range(500):
            await method(pa, "call.update", audio_muted=i % 2 == 0)
        await method(pa, "call.update", audio_muted=True)  # the last word
        call_b = pb.service.current()
        assert call_b is not None

        def last_shown() -> Any:
            shown = [e.data["remote"] for e in pb.events if e.kind == "call.state"]
            return shown and shown[-1].get("audio_muted") is True

        await eventually("the last state published", last_shown)
        assert call_b.remote_update["audio_muted"] is True
        assert len([e for e in pb.events if e.kind == "call.state"]) <= 20
        await method(pa, "call.hangup")
