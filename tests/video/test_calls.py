"""Calls between embedded nodes in this process: the whole stack is real (mesh, ICE on
the node's userspace UDP, DTLS, SRTP, codecs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from apps.video.call import CallOptions
from tests.video.helpers import phones, trust_each_other
from tests.video.mesh import CallMesh

pytestmark = pytest.mark.timeout(90)


async def test_a_test_pattern_call_delivers_video_and_audio(tmp_path: Path) -> None:
    async with CallMesh(tmp_path) as mesh:
        a, b = await mesh.open(2)
        async with phones([a, b], tmp_path) as (pa, pb):
            trust_each_other(pa, pb)
            call = await pa.service.place(pb.node.key.hex(), CallOptions())
            incoming = await pb.wait_event("call.incoming")
            assert incoming["peer"] == a.key.hex()
            await pb.service.control_methods()["call.answer"]({})
            await pa.wait_state("active")
            import asyncio

            await asyncio.sleep(3)
            status = await pa.service.control_methods()["call.status"]({})
            print(status)
            await pa.service.control_methods()["call.hangup"]({})
            summary = await pa.wait_event("call.ended")
            print(summary)
            other = await pb.wait_event("call.ended")
            print(other)
            assert summary["video_frames_received"] > 30
