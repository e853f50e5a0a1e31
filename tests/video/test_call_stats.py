"""A call's stats say what is measured now: an fps that falls to 0 when frames stop
(not the last rate, frozen), none at all before any frame (left out, as the docs say),
and no RTT from a sample that came out below zero."""

from __future__ import annotations

import ipaddress
from types import SimpleNamespace
from typing import Any, cast

from apps.video.call import Call
from apps.video.media import FPS_WINDOW, KindStats, MediaSink
from apps.video.signaling import Role


def test_fps_is_none_before_frames_measured_while_they_come_and_zero_once_they_stop() -> None:
    video = KindStats()
    assert video.fps(now=100.0) is None
    for i in range(60):  # 30 fps for two seconds
        video.recent.append(100.0 + i / 30)
    assert abs((video.fps(now=102.0) or 0) - 30) < 1.5
    assert (video.fps(now=102.0 + FPS_WINDOW + 0.1) or 0) == 0.0
    half = video.fps(now=103.0)  # a second after the last frame: falling, not frozen
    assert half is not None and 0 < half < 20


class _Stats:
    def __init__(self, items: list[Any]) -> None:
        self.items = items

    async def getStats(self) -> dict[str, Any]:  # aiortc's name
        return {str(i): item for i, item in enumerate(self.items)}


def _call(items: list[Any], media: tuple[str, ...]) -> Call:
    address = ipaddress.IPv6Address("200::1")
    call = Call(cast(Any, None), Role.CALLER, bytes(32), address, media=media)
    call.pc = cast(Any, _Stats(items))
    call.sink = MediaSink()
    return call


async def test_a_negative_rtt_sample_is_no_rtt_and_an_audio_call_has_no_fps() -> None:
    rtt = SimpleNamespace(type="remote-inbound-rtp", roundTripTime=-0.04467)
    stats = await _call([rtt], ("audio",)).stats()
    assert stats["rtt_ms"] is None and stats["fps"] is None
    good = SimpleNamespace(type="remote-inbound-rtp", roundTripTime=0.012)
    stats = await _call([rtt, good], ("audio", "video")).stats()
    assert stats["rtt_ms"] == 12.0
    assert stats["fps"] is None  # video negotiated, no frame yet: not "0.0 fps"
