"""Media pieces without a call: the coded stamp survives VP8, the gate keeps one
timeline across source switches and blanks when muted, sources refuse bad specs."""

from __future__ import annotations

import asyncio
import fractions
from pathlib import Path

import av
import pytest
from aiortc import MediaStreamTrack
from aiortc.codecs.opus import OpusEncoder

from apps.video.media import Gate, TestPattern, Tone, open_source, read_stamp
from core.errors import UsageError


async def test_the_frame_stamp_reads_back_after_a_vp8_round_trip() -> None:
    pattern = TestPattern(640, 480, 60)
    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height, encoder.pix_fmt = 640, 480, "yuv420p"
    encoder.time_base = fractions.Fraction(1, 90_000)
    encoder.bit_rate = 300_000
    decoder = av.CodecContext.create("vp8", "r")
    read: list[int] = []
    for _ in range(10):
        frame = await pattern.recv()
        for packet in encoder.encode(frame):
            for decoded in decoder.decode(packet):
                stamp = read_stamp(decoded)
                assert stamp is not None
                read.append(stamp[0])
    assert read == list(range(len(read))) and len(read) >= 5
    pattern.stop()


async def test_the_gate_keeps_one_timeline_across_a_source_switch_and_blanks_when_muted() -> None:
    gate = Gate("video", TestPattern(320, 240, 60))
    first = [await gate.recv() for _ in range(3)]
    old = gate.switch(TestPattern(320, 240, 60))  # a new source starts its pts at 0 again
    old.stop()
    after = [await gate.recv() for _ in range(3)]
    pts = [f.pts for f in first + after]
    assert pts == sorted(pts) and len(set(pts)) == len(pts)
    gate.muted = True
    assert read_stamp(await gate.recv()) is None  # black: no pattern, no stamp
    gate.stop()
    gate.source.stop()


async def test_a_muted_audio_gate_sends_silence() -> None:
    gate = Gate("audio", Tone())
    loud = await gate.recv()
    assert any(bytes(loud.planes[0]))
    gate.muted = True
    quiet = await gate.recv()
    assert not any(bytes(quiet.planes[0])) and quiet.samples == loud.samples
    gate.stop()
    gate.source.stop()


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("/no/such/file.mkv", "is not testsrc, an existing media file or a device"),
        ("testsrc:big", "testsrc size must look like 640x480@30"),
        ("testsrc:641x480@30", "even size"),
    ],
)
def test_bad_sources_are_refused_with_what_to_do(spec: str, reason: str) -> None:
    with pytest.raises(UsageError, match=reason):
        open_source(spec)


async def test_a_media_file_source_plays_its_video_and_audio(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mkv"
    pattern, tone = TestPattern(320, 240, 30), Tone()
    with av.open(str(clip), "w") as out:
        video = out.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
        audio = out.add_stream("aac", rate=48_000)
        for _ in range(15):
            out.mux(video.encode(await pattern.recv()))
            out.mux(audio.encode(await tone.recv()))
        out.mux(video.encode(None))
        out.mux(audio.encode(None))
    source = open_source(str(clip))
    try:
        assert source.video is not None and source.audio is not None
        frame = await source.video.recv()
        assert (frame.width, frame.height) == (320, 240) and read_stamp(frame) is not None
        assert isinstance(await source.audio.recv(), av.AudioFrame)
    finally:
        source.close()
        pattern.stop()
        tone.stop()


async def test_video_of_one_source_and_sound_of_another_combine_with_a_plus() -> None:
    source = open_source("testsrc:320x240@15+testsrc")
    try:
        assert isinstance(source.video, TestPattern) and source.video.width == 320
        assert isinstance(source.audio, Tone)
    finally:
        source.close()


async def test_a_switch_while_the_gate_waits_goes_on_with_the_new_source() -> None:
    slow = TestPattern(320, 240, 1)  # its next frame is a second away
    gate = Gate("video", slow)
    await gate.recv()
    waiting = asyncio.ensure_future(gate.recv())
    await asyncio.sleep(0.05)
    gate.switch(TestPattern(160, 120, 60)).stop()
    frame = await asyncio.wait_for(waiting, 3)
    assert frame.width == 160  # not the stale frame of the old source
    gate.stop()
    gate.source.stop()


class _Sound(MediaStreamTrack):
    """20 ms of a non-silent sound in a given sample format and layout (a browser's
    decoded stereo, MediaPlayer's stereo, the tone's mono), as fast as read."""

    kind = "audio"

    def __init__(self, fmt: str, layout: str) -> None:
        super().__init__()
        self.fmt, self.layout, self.pts = fmt, layout, 0

    async def recv(self) -> av.AudioFrame:
        frame = av.AudioFrame(format=self.fmt, layout=self.layout, samples=960)
        for plane in frame.planes:
            plane.update(bytes([0x11, 0x22]) * (plane.buffer_size // 2))
        frame.sample_rate, frame.pts = 48000, self.pts
        frame.time_base = fractions.Fraction(1, 48000)
        self.pts += 960
        return frame


@pytest.mark.parametrize(("fmt", "layout"), [("s16", "stereo"), ("s16", "mono")])
async def test_muting_any_audio_source_any_number_of_times_keeps_the_encoder_going(
    fmt: str, layout: str
) -> None:
    """The Opus encoder sets its resampler up from the first frame: silence must come in
    the source's own layout, or every frame after a mute is refused (and the call's
    audio ends)."""
    gate = Gate("audio", _Sound(fmt, layout))
    encoder = OpusEncoder()
    for muted in [False, True, False, True, True, False, True, False] * 3:
        gate.muted = muted
        frame = await gate.recv()
        assert (frame.format.name, frame.layout.name, frame.samples) == (fmt, layout, 960)
        assert any(any(bytes(p)) for p in frame.planes) != muted
        packets, _ = encoder.encode(frame)
        assert packets
    gate.stop()
    gate.source.stop()


async def _clip(path: Path, frames: int) -> None:
    """A short clip of the stamped test pattern (320x240 @ 30) and the tone."""
    pattern, tone = TestPattern(320, 240, 30), Tone()
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
        audio = out.add_stream("aac", rate=48_000)
        for _ in range(frames):
            out.mux(video.encode(await pattern.recv()))
            for _ in range(2):  # 40 ms of sound a frame: a little more than the picture
                out.mux(audio.encode(await tone.recv()))
        out.mux(video.encode(None))
        out.mux(audio.encode(None))
    pattern.stop()
    tone.stop()


@pytest.mark.timeout(60)
async def test_a_file_source_plays_over_and_over_on_one_timeline(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mkv"
    await _clip(clip, 10)  # a third of a second: three passes take a second
    source = open_source(str(clip))
    try:
        assert source.video is not None and source.audio is not None
        numbers, pts = [], []
        while len(numbers) < 35:
            frame = await asyncio.wait_for(source.video.recv(), 10)
            stamp = read_stamp(frame)
            assert stamp is not None
            numbers.append(stamp[0])
            pts.append(frame.pts)
        assert numbers.count(0) >= 3, numbers  # the clip began again, more than once
        assert pts == sorted(pts) and len(set(pts)) == len(pts), pts
        sound = [await asyncio.wait_for(source.audio.recv(), 10) for _ in range(60)]
        heard = [f.pts for f in sound]
        assert heard == sorted(heard) and len(set(heard)) == len(heard)
    finally:
        source.close()
