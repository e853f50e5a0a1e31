"""Calls between embedded nodes in this process. The whole stack is real: the mesh
(every call crosses the relay node, which forwards), ICE on the nodes' userspace UDP,
DTLS, SRTP, VP8/Opus. Every SDP sent is checked to name only the sender's mesh address
when the phones close (tests/video/helpers.py)."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import av
import pytest

from apps.video.call import CallOptions
from apps.video.media import read_stamp
from core import Trust, UsageError
from tests.video.helpers import (
    StereoTone,
    connect,
    method,
    phones,
    trust_each_other,
    trusted_pair,
)
from tests.video.mesh import CallMesh, eventually
from tests.video.oswatch import udp_socket_inodes

pytestmark = pytest.mark.timeout(90)


def _decoded_recording(path: Path) -> tuple[list[tuple[int, int]], int, str]:
    """The (frame number, send time ms) stamps read back from a recording's video, its
    audio frame count, and its video resolution."""
    stamps: list[tuple[int, int]] = []
    audio = 0
    size = ""
    with av.open(str(path)) as container:
        for frame in container.decode(*container.streams):
            if isinstance(frame, av.VideoFrame):
                size = f"{frame.width}x{frame.height}"
                stamp = read_stamp(frame)
                if stamp is not None:
                    stamps.append(stamp)
            else:
                audio += 1
    return stamps, audio, size


@pytest.mark.timeout(120)
async def test_a_test_pattern_call_records_five_seconds_whose_frame_counter_advances(
    tmp_path: Path,
) -> None:
    async with trusted_pair(tmp_path) as (pa, pb):
        a, b = pa.node, pb.node
        before = udp_socket_inodes()
        recording = tmp_path / "received.mkv"
        call = await pa.service.place(b.key.hex(), CallOptions())
        await pb.wait_event("call.incoming")
        await method(pb, "call.answer", record_to=str(recording))
        await pa.wait_state("active")
        await asyncio.sleep(6.0)
        during = udp_socket_inodes()
        await method(pa, "call.hangup")
        mine = await pa.wait_event("call.ended")
        theirs = await pb.wait_event("call.ended")
    assert during <= before, "the call opened an OS UDP socket"
    assert mine["id"] == theirs["id"] == call.id
    assert mine["result"] == theirs["result"] == "answered"
    # Frame rates are what a loaded 2-core machine decodes and records, not 30 fps.
    assert theirs["video_frames_received"] >= 5 * 10
    assert theirs["audio_frames_received"] >= 5 * 25
    assert mine["local_candidates"] == [str(a.address)]
    assert mine["remote_candidates"] == [str(b.address)]
    assert mine["setup_s"] is not None and mine["setup_s"] < 3
    assert mine["stats"]["rtt_ms"] is not None
    stamps, audio_frames, size = _decoded_recording(recording)
    assert size == "640x480"
    assert len(stamps) >= 5 * 10, f"only {len(stamps)} stamped frames decoded"
    numbers = [n for n, _ in stamps]
    sent_ms = (stamps[-1][1] - stamps[0][1]) & 0xFFFFFFFF
    assert sent_ms >= 5000, f"the recording covers {sent_ms} ms of the sender's pattern"
    assert numbers[-1] - numbers[0] >= 5 * 10
    assert sum(1 for x, y in itertools.pairwise(numbers) if y > x) >= len(numbers) * 0.9
    assert audio_frames > 0


async def test_the_callee_hanging_up_ends_the_call_on_both_sides(tmp_path: Path) -> None:
    async with trusted_pair(tmp_path) as (pa, pb):
        await connect(pa, pb)
        await asyncio.sleep(1)
        await method(pb, "call.hangup")
        mine = await pa.wait_event("call.ended")
        theirs = await pb.wait_event("call.ended")
        assert mine["result"] == theirs["result"] == "answered"
        assert mine["video_frames_received"] > 0 and theirs["video_frames_received"] > 0
        log_a = await method(pa, "call.log")
        log_b = await method(pb, "call.log")
    assert [(r["direction"], r["outcome"]) for r in log_a] == [("outgoing", "answered")]
    assert [(r["direction"], r["result"]) for r in log_b] == [("incoming", "answered")]
    assert log_a[0]["duration_s"] >= 0.9


async def test_a_declined_call_is_rejected_on_both_sides(tmp_path: Path) -> None:
    async with trusted_pair(tmp_path) as (pa, pb):
        b = pb.node
        placed = await pa.service.place(b.key.hex(), CallOptions())
        incoming = await pb.wait_event("call.incoming")
        assert (placed.alias, incoming["alias"], incoming["peer"]) == ("b", "a", pa.node.key.hex())
        await pa.wait_state("ringing")
        await method(pb, "call.reject")
        mine = await pa.wait_event("call.ended")
        theirs = await pb.wait_event("call.ended")
        assert (mine["result"], theirs["result"]) == ("rejected", "rejected")
        assert (await method(pa, "call.log"))[0]["result"] == "rejected"


async def test_a_second_call_while_in_one_gets_busy(tmp_path: Path) -> None:
    async with CallMesh(tmp_path) as mesh:
        a, b, c = await mesh.open(3)
        async with phones([a, b, c], tmp_path) as (pa, pb, pc):
            await trust_each_other(pa, pb)
            await trust_each_other(pc, pb, ("c", "b"))
            first = await connect(pa, pb)
            await pc.service.place(b.key.hex(), CallOptions(audio_only=True))
            busy = await pc.wait_event("call.ended")
            assert busy["result"] == "busy"
            missed = await pb.wait_event("call.missed")
            assert missed["peer"] == c.key.hex()
            status = await method(pa, "call.status")
            assert (status["id"], status["state"]) == (first, "active")


async def test_an_unanswered_call_is_missed_on_both_sides_after_the_ring_timeout(
    tmp_path: Path,
) -> None:
    async with trusted_pair(tmp_path, ring_timeout=1.5) as (pa, pb):
        b = pb.node
        await pa.service.place(b.key.hex(), CallOptions())
        await pb.wait_event("call.incoming")
        mine = await pa.wait_event("call.missed", timeout=10)
        theirs = await pb.wait_event("call.missed", timeout=10)
        assert (mine["result"], theirs["result"]) == ("no-answer", "missed")
        assert [(r["result"], r["outcome"]) for r in await method(pa, "call.log")] == [
            ("no-answer", "missed")
        ]
        assert (await method(pb, "call.log"))[0]["result"] == "missed"


async def test_callers_who_are_not_trusted_contacts_are_refused(tmp_path: Path) -> None:
    async with CallMesh(tmp_path) as mesh:
        a, b = await mesh.open(2)
        async with phones([a, b], tmp_path) as (pa, pb):
            await pa.node.contacts.add(b.key)  # A knows B, but B does not know A
            await pa.service.place(b.key.hex(), CallOptions(audio_only=True))
            refused = await pa.wait_event("call.ended")
            assert refused["result"] == "not-a-contact"
            assert "call.incoming" not in pb.kinds()
            stranger = await pb.node.contacts.get(a.key)  # remembered, like a message request
            assert stranger is not None and stranger.trust is Trust.UNKNOWN
            assert (await method(pb, "call.log"))[0]["result"] == "not-a-contact"


async def test_ring_everyone_still_refuses_blocked_keys(tmp_path: Path) -> None:
    async with CallMesh(tmp_path) as mesh:
        a, b, c = await mesh.open(3)
        async with phones([a, b, c], tmp_path, ring="everyone") as (pa, pb, pc):
            await pb.node.contacts.block(c.key)
            await pa.service.place(b.key.hex(), CallOptions(audio_only=True))
            await pb.wait_event("call.incoming")  # a stranger rings
            await method(pb, "call.reject")
            await pa.wait_event("call.ended")
            await pc.service.place(b.key.hex(), CallOptions(audio_only=True))
            assert (await pc.wait_event("call.ended"))["result"] == "not-a-contact"


async def test_an_audio_only_call_crosses_the_forwarding_relay_node(tmp_path: Path) -> None:
    async with CallMesh(tmp_path) as mesh:
        a, b = await mesh.open(2)
        assert mesh.relay is not None
        relay_key = mesh.relay.key.hex()
        for node in (a, b):  # no direct link: each node's only peer is the relay
            assert [p.key.hex() for p in await node.peers() if p.key] == [relay_key]
        async with phones([a, b], tmp_path) as (pa, pb):
            await trust_each_other(pa, pb)
            await connect(pa, pb, audio_only=True)
            await eventually(
                "audio at B",
                lambda: pb.service.current().sink.audio.frames > 50,  # type: ignore[union-attr]
            )
            await method(pa, "call.hangup")
            mine = await pa.wait_event("call.ended")
    assert mine["media"] == ["audio"]
    assert mine["audio_frames_received"] > 0 and mine["video_frames_received"] == 0
    assert mine["setup_s"] is not None


async def test_mute_camera_off_and_source_switch_mid_call_reach_the_peer(tmp_path: Path) -> None:
    async with trusted_pair(tmp_path) as (pa, pb):
        await connect(pa, pb)
        call_b = pb.service.current()
        assert call_b is not None and call_b.sink is not None
        sink = call_b.sink
        await eventually("stamped frames", lambda: len(sink.stamps) > 10)
        await method(pa, "call.update", audio_muted=True, video_off=True)
        await eventually("the update at B", lambda: call_b.remote_update.get("video_off"))
        await asyncio.sleep(0.5)
        frozen = len(sink.stamps)
        await asyncio.sleep(1.0)
        assert len(sink.stamps) <= frozen + 2, "camera off still sent the pattern"
        await method(pa, "call.update", video_off=False, source="testsrc:320x240@15")
        await eventually("the new source", lambda: sink.video.width == 320, timeout=10)
        assert call_b.remote_update["source"] == "testsrc:320x240@15"
        await method(pa, "call.hangup")


async def test_mute_and_camera_off_any_number_of_times_the_peer_gets_media_back_each_time(
    tmp_path: Path,
) -> None:
    async with trusted_pair(tmp_path) as (pa, pb):
        await connect(pa, pb, tracks={"audio": StereoTone()})
        call_b = pb.service.current()
        assert call_b is not None and call_b.sink is not None
        sound = call_b.sink.audio
        stamps = call_b.sink.stamps
        await eventually("A's sound at B", lambda: sound.sounding > 10)
        for _ in range(4):
            quiet = sound.quiet
            await method(pa, "call.update", audio_muted=True, video_off=True)
            # Muted is silence that still flows (the peer knows the line is up)...
            await eventually("silence at B", lambda q=quiet: sound.quiet > q + 10, timeout=20)
            seen = len(stamps)
            await asyncio.sleep(0.3)
            assert len(stamps) <= seen + 2, "camera off still sent the pattern"
            # ...and unmuted the sound and the picture come back, every time.
            sounding, seen = sound.sounding, len(stamps)
            await method(pa, "call.update", audio_muted=False, video_off=False)
            await eventually("sound back", lambda n=sounding: sound.sounding > n + 10, timeout=20)
            await eventually("picture back", lambda n=seen: len(stamps) > n + 5, timeout=20)
        await method(pa, "call.hangup")


async def test_a_caller_cancelling_while_it_rings_is_a_missed_call_at_the_callee(
    tmp_path: Path,
) -> None:
    async with trusted_pair(tmp_path) as (pa, pb):
        await pa.service.place(pb.node.key.hex(), CallOptions(audio_only=True))
        await pb.wait_event("call.incoming")
        await method(pa, "call.hangup")
        mine = await pa.wait_event("call.ended")
        theirs = await pb.wait_event("call.missed")
        assert (mine["result"], mine["detail"]) == ("no-answer", "cancelled")
        assert theirs["result"] == "missed"
        with pytest.raises(UsageError, match="no call in progress"):
            await method(pb, "call.answer")


async def test_answering_with_a_source_that_does_not_open_keeps_the_call_ringing(
    tmp_path: Path,
) -> None:
    async with trusted_pair(tmp_path) as (pa, pb):
        await pa.service.place(pb.node.key.hex(), CallOptions(audio_only=True))
        await pb.wait_event("call.incoming")
        with pytest.raises(UsageError, match="not testsrc, an existing media file"):
            await method(pb, "call.answer", source=str(tmp_path / "missing.webm"))
        await method(pb, "call.answer")
        await pa.wait_state("active")
        await method(pb, "call.hangup")
        assert (await pa.wait_event("call.ended"))["result"] == "answered"


async def test_two_calls_arriving_together_ring_once_and_the_other_is_busy(
    tmp_path: Path,
) -> None:
    async with CallMesh(tmp_path) as mesh:
        a, b, c = await mesh.open(3)
        async with phones([a, b, c], tmp_path) as (pa, pb, pc):
            await trust_each_other(pa, pb)
            await trust_each_other(pc, pb, ("c", "b"))
            await asyncio.gather(
                pa.service.place(b.key.hex(), CallOptions(audio_only=True)),
                pc.service.place(b.key.hex(), CallOptions(audio_only=True)),
            )
            await pb.wait_event("call.incoming")
            busy = await eventually(
                "one caller told busy", lambda: [*pa.ended(), *pc.ended()], timeout=15
            )
            assert [e["result"] for e in busy] == ["busy"]
            assert [e.kind for e in pb.events].count("call.incoming") == 1
            await method(pb, "call.reject")


async def test_calling_a_node_that_is_not_on_the_mesh_fails_saying_so(tmp_path: Path) -> None:
    async with trusted_pair(tmp_path, dial_timeout=1.0) as (pa, _):
        nobody = bytes(range(32)).hex()
        await pa.service.place(nobody, CallOptions(audio_only=True))
        failed = await pa.wait_event("call.ended", timeout=20)
        assert failed["result"] == "failed"
        assert failed["detail"].startswith("cannot reach the callee: ")
        assert failed["detail"] != "cannot reach the callee: "


async def test_a_stranger_ringing_over_and_over_is_logged_five_times_a_minute(
    tmp_path: Path,
) -> None:
    async with trusted_pair(tmp_path) as (pa, pb):
        await pb.node.contacts.set_trust(pa.node.key, Trust.UNKNOWN)  # B no longer trusts A
        for _ in range(7):
            await pa.service.place(pb.node.key.hex(), CallOptions(audio_only=True))
            await eventually("refused", lambda: pa.service.current() is None, timeout=10)
        assert all(e["result"] == "not-a-contact" for e in pa.ended()) and len(pa.ended()) == 7
        assert len(await method(pb, "call.log")) == 5
        assert len(pb.ended()) == 5
        assert "call.state" not in pb.kinds()  # refused before ringing: no UI moves


@pytest.mark.timeout(120)
async def test_a_peer_cut_off_for_good_ends_the_call_on_both_sides_as_connection_lost(
    tmp_path: Path,
) -> None:
    async with CallMesh(tmp_path) as mesh:
        nodes = await mesh.open(2)
        async with phones(nodes, tmp_path) as (pa, pb):
            await trust_each_other(pa, pb)
            await connect(pa, pb)
            assert mesh.mem is not None and mesh.relay is not None
            await mesh.mem.unlink(mesh.relay, pb.node)  # B is gone: no hangup, no FIN
            # Well before the signaling stream's idle timeout (20 s): the media's pulse.
            mine = await pa.wait_event("call.ended", timeout=15)
            theirs = await pb.wait_event("call.ended", timeout=15)
    for summary in (mine, theirs):
        assert summary["result"] == "answered"
        assert summary["detail"].startswith("connection lost"), summary["detail"]


@pytest.mark.timeout(120)
async def test_a_short_link_flap_is_ridden_out_and_media_resumes_on_the_same_call(
    tmp_path: Path,
) -> None:
    async with CallMesh(tmp_path) as mesh:
        nodes = await mesh.open(2)
        # A flap well inside lost_after, whatever the machine's load does to the restore.
        async with phones(nodes, tmp_path, lost_after=8.0) as (pa, pb):
            await trust_each_other(pa, pb)
            call_id = await connect(pa, pb)
            call_b = pb.service.current()
            assert call_b is not None and call_b.sink is not None
            sink = call_b.sink
            assert mesh.mem is not None and mesh.relay is not None
            await mesh.mem.unlink(mesh.relay, pb.node)
            await asyncio.sleep(1.0)
            await mesh.mem.link(mesh.relay, pb.node)
            frames = sink.audio.frames
            await eventually("B hears A again", lambda: sink.audio.frames > frames + 25, 20)
            for phone in (pa, pb):
                current = phone.service.current()
                assert current is not None and current.id == call_id
                assert current.state.value == "active"
            assert "call.ended" not in pa.kinds() and "call.ended" not in pb.kinds()
            await method(pa, "call.hangup")
