"""Media for calls: sources (test pattern + tone, file, camera/microphone), the gate
that mutes and switches them mid-call, and the sink that counts, measures and records
what arrives.

The test pattern is ``yuv420p`` drawn with plain bytes (no numpy): a moving bar, a
human-readable ``#frame hh:mm:ss.mmm`` line and, in the top 32 rows, the frame number
and the send time (ms) as black/white blocks that survive VP8 and are read back by
:func:`read_stamp` on the far side (frame counter, end-to-end latency).
"""

from __future__ import annotations

import array
import asyncio
import fractions
import logging
import math
import struct
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
from aiortc.contrib.media import MediaPlayer, MediaRelay
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from apps.video.record import Recorder
from core import UsageError

__all__ = [
    "Gate",
    "MediaSink",
    "Source",
    "TestPattern",
    "Tone",
    "open_source",
    "read_stamp",
]

log = logging.getLogger(__name__)

VIDEO_CLOCK = 90_000
AUDIO_RATE = 48_000
FPS_WINDOW = 2.0  # seconds of frames an fps is measured over
SOUND_PEAK = 64  # s16: above decoded silence and codec noise, far below a voice
AUDIO_SAMPLES = 960  # 20 ms
BLACK, WHITE, GREY = 16, 235, 128
CODE_BLOCKS = 40  # per row, two rows: 32-bit frame number, 32-bit ms, 16-bit check
_STAMP = struct.Struct(">IIH")


# -- the test pattern ------------------------------------------------------------------
_FONT = {  # 3x5 glyphs, rows top to bottom, bit 2 = left column
    "0": (7, 5, 5, 5, 7), "1": (2, 6, 2, 2, 7), "2": (7, 1, 7, 4, 7), "3": (7, 1, 7, 1, 7),
    "4": (5, 5, 7, 1, 1), "5": (7, 4, 7, 1, 7), "6": (7, 4, 7, 5, 7), "7": (7, 1, 1, 1, 1),
    "8": (7, 5, 7, 5, 7), "9": (7, 5, 7, 1, 7), "#": (5, 7, 5, 7, 5), ":": (0, 2, 0, 2, 0),
    ".": (0, 0, 0, 0, 2), " ": (0, 0, 0, 0, 0),
}  # fmt: skip


def _text_rows(text: str, width: int, scale: int) -> list[bytes]:
    """Rows (``5 * scale`` of them) of ``width`` luma bytes with ``text`` in white."""
    on, off = bytes([WHITE]) * scale, bytes([BLACK]) * scale
    rows: list[bytes] = []
    for r in range(5):
        parts = []
        for ch in text:
            bits = _FONT.get(ch, _FONT[" "])[r]
            parts.append(b"".join(on if bits >> (2 - c) & 1 else off for c in range(3)) + off)
        row = b"".join(parts)[:width]
        rows.extend([row + bytes([BLACK]) * (width - len(row))] * scale)
    return rows


def _code_rows(frame_no: int, ms: int, width: int) -> list[bytes]:
    payload = _STAMP.pack(frame_no & 0xFFFFFFFF, ms & 0xFFFFFFFF, 0)
    check = _check(payload)
    bits_all = int.from_bytes(_STAMP.pack(frame_no & 0xFFFFFFFF, ms & 0xFFFFFFFF, check), "big")
    block = width // CODE_BLOCKS
    rows: list[bytes] = []
    nbits = _STAMP.size * 8
    for line in range(2):
        parts = []
        for i in range(CODE_BLOCKS):
            bit = line * CODE_BLOCKS + i
            value = bits_all >> (nbits - 1 - bit) & 1 if bit < nbits else 0
            parts.append(bytes([WHITE if value else BLACK]) * block)
        row = b"".join(parts)
        rows.extend([row + bytes([BLACK]) * (width - len(row))] * 16)
    return rows


def _check(payload: bytes) -> int:
    """A check that an all-black or all-white frame fails."""
    return (sum(payload[:8]) * 7 + 0x5A5A) & 0xFFFF


def read_stamp(frame: av.VideoFrame) -> tuple[int, int] | None:
    """The (frame number, send time ms mod 2**32) coded into a test-pattern frame, or
    None when the blocks do not read back with a valid check."""
    if frame.format.name != "yuv420p":
        frame = frame.reformat(format="yuv420p")
    plane = frame.planes[0]
    data = memoryview(plane)
    stride = plane.line_size
    block = frame.width // CODE_BLOCKS
    if block < 4 or frame.height < 40:
        return None
    bits = 0
    for bit in range(_STAMP.size * 8):
        line, i = divmod(bit, CODE_BLOCKS)
        y = line * 16 + 8
        x = i * block + block // 2
        bits = bits << 1 | (1 if data[y * stride + x] > GREY else 0)
    frame_no, ms, check = _STAMP.unpack(bits.to_bytes(_STAMP.size, "big"))
    if _check(_STAMP.pack(frame_no, ms, 0)) != check:
        return None
    return frame_no, ms


def wall_ms() -> int:
    return int(time.time() * 1000) & 0xFFFFFFFF


class _Pacer:
    """Releases item ``n`` at ``start + n / rate`` (real time)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._start: float | None = None

    async def wait(self, n: float) -> None:
        now = time.monotonic()
        if self._start is None:
            self._start = now
        due = self._start + n / self.rate
        if due > now:
            await asyncio.sleep(due - now)


class TestPattern(MediaStreamTrack):
    """A moving test pattern at ``fps``, with frame number and time drawn in."""

    kind = "video"
    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, width: int = 640, height: int = 480, fps: float = 30.0) -> None:
        super().__init__()
        if width % 2 or height % 2 or width < 160 or height < 120 or not 1 <= fps <= 60:
            raise UsageError("test pattern: even size of at least 160x120, 1-60 fps")
        self.width, self.height, self.fps = width, height, fps
        self._count = 0
        self._pacer = _Pacer(fps)
        self._chroma = bytes([GREY]) * (width * height // 2)

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._pacer.wait(self._count)
        frame = self._draw(self._count)
        frame.pts = int(self._count * VIDEO_CLOCK / self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self._count += 1
        return frame

    def _draw(self, n: int) -> av.VideoFrame:
        w, h = self.width, self.height
        bar = w // 8
        x = (n * 8) % (w - bar)
        body = bytes([BLACK + 40]) * x + bytes([WHITE]) * bar + bytes([BLACK + 40]) * (w - bar - x)
        stamp = time.time()
        clock = time.strftime("%H:%M:%S", time.gmtime(stamp)) + f".{int(stamp * 1000) % 1000:03d}"
        header = _code_rows(n, int(stamp * 1000), w) + [bytes([BLACK]) * w] * 8
        text = _text_rows(f"#{n:06d} {clock}", w, max(2, w // 160))
        rows = header + text
        luma = b"".join(rows) + body * (h - len(rows))
        frame = av.VideoFrame(w, h, "yuv420p")
        _fill(frame.planes[0], luma, w)
        _fill(frame.planes[1], self._chroma[: w * h // 4], w // 2)
        _fill(frame.planes[2], self._chroma[: w * h // 4], w // 2)
        return frame


def _fill(plane: Any, data: bytes, width: int) -> None:
    if plane.line_size == width:
        plane.update(data)
        return
    pad = bytes(plane.line_size - width)
    plane.update(b"".join(data[i : i + width] + pad for i in range(0, len(data), width)))


class Tone(MediaStreamTrack):
    """A 440 Hz tone, 48 kHz mono, 20 ms frames."""

    kind = "audio"

    def __init__(self, hz: int = 440) -> None:
        super().__init__()
        table = [int(8000 * math.sin(2 * math.pi * hz * i / AUDIO_RATE)) for i in range(AUDIO_RATE)]
        self._table = struct.pack(f"<{AUDIO_RATE}h", *table) * 2
        self._samples = 0
        self._pacer = _Pacer(AUDIO_RATE)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._pacer.wait(self._samples)
        offset = 2 * (self._samples % AUDIO_RATE)
        frame = _audio_frame(self._table[offset : offset + 2 * AUDIO_SAMPLES], self._samples)
        self._samples += AUDIO_SAMPLES
        return frame


def _audio_frame(pcm: bytes, pts: int) -> av.AudioFrame:
    frame = av.AudioFrame(format="s16", layout="mono", samples=len(pcm) // 2)
    frame.planes[0].update(pcm)
    frame.sample_rate = AUDIO_RATE
    frame.pts = pts
    frame.time_base = fractions.Fraction(1, AUDIO_RATE)
    return frame


def black_frame(width: int, height: int) -> av.VideoFrame:
    """A black ``yuv420p`` picture (what a camera that went away sends meanwhile)."""
    frame = av.VideoFrame(width, height, "yuv420p")
    _fill(frame.planes[0], bytes([BLACK]) * (width * height), width)
    grey = bytes([GREY]) * ((width // 2) * (height // 2))
    _fill(frame.planes[1], grey, width // 2)
    _fill(frame.planes[2], grey, width // 2)
    return frame


def silence_like(frame: av.AudioFrame) -> av.AudioFrame:
    """Silence in ``frame``'s own format, layout, rate and length: what a muted gate
    sends, so the encoder's resampler (set up by the first frame) takes it as it took
    the sound (a browser's stereo, a file's planar float, the tone's mono)."""
    silent = av.AudioFrame(
        format=frame.format.name, layout=frame.layout.name, samples=frame.samples
    )
    for plane in silent.planes:
        plane.update(bytes(plane.buffer_size))
    silent.sample_rate = frame.sample_rate
    silent.time_base = frame.time_base
    return silent


# -- the gate: mute, camera off, switch source ----------------------------------------
class Gate(MediaStreamTrack):
    """What the peer connection sends for one kind: frames of the current source,
    re-stamped on one continuous timeline, blanked while muted; the source can be
    switched at any time."""

    def __init__(self, kind: str, source: MediaStreamTrack) -> None:
        super().__init__()
        self.kind = kind
        self._source = source
        self.muted = False
        self._offset: int | None = None
        self._last = -1
        self._black: av.VideoFrame | None = None

    @property
    def source(self) -> MediaStreamTrack:
        return self._source

    def switch(self, source: MediaStreamTrack) -> MediaStreamTrack:
        """Send ``source`` from now on; returns the previous one (the caller stops it)."""
        old, self._source = self._source, source
        self._offset = None
        return old

    async def recv(self) -> av.AudioFrame | av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        while True:
            source = self._source
            try:
                frame = await source.recv()
            except MediaStreamError:
                if source is self._source:
                    raise
                continue  # switched while waiting: the old source was stopped
            if source is self._source:
                break
        assert isinstance(frame, av.AudioFrame | av.VideoFrame)
        if self._offset is None:  # first frame of a source: continue the timeline
            self._offset = self._last + 1 - (frame.pts or 0)
        pts = (frame.pts or 0) + self._offset
        if pts <= self._last:
            pts = self._last + 1
        self._last = pts
        if self.muted:
            frame = self._blank(frame)
        frame.pts = pts
        return frame

    def _blank(self, frame: Any) -> Any:
        if isinstance(frame, av.AudioFrame):
            return silence_like(frame)
        if self._black is None or (self._black.width, self._black.height) != (
            frame.width,
            frame.height,
        ):
            black = av.VideoFrame(frame.width, frame.height, "yuv420p")
            _fill(black.planes[0], bytes([BLACK]) * (frame.width * frame.height), frame.width)
            grey = bytes([GREY]) * (frame.width * frame.height // 4)
            _fill(black.planes[1], grey, frame.width // 2)
            _fill(black.planes[2], grey, frame.width // 2)
            self._black = black
        out = av.VideoFrame(frame.width, frame.height, "yuv420p")
        for i in range(3):
            out.planes[i].update(bytes(self._black.planes[i]))
        out.time_base = frame.time_base
        return out


# -- sources ----------------------------------------------------------------------------
@dataclass
class Source:
    """The tracks of one source (either may be None) and what closes it."""

    spec: str
    audio: MediaStreamTrack | None
    video: MediaStreamTrack | None
    player: MediaPlayer | None = None

    def close(self) -> None:
        for track in (self.audio, self.video):
            if track is not None:
                track.stop()


def _device(spec: str) -> tuple[str, str | None, dict[str, str]]:
    """(file, ffmpeg format, options) for a device spec."""
    video_opts = {"video_size": "640x480", "framerate": "30"}
    if spec.startswith("/dev/video"):
        return spec, "v4l2", video_opts
    for prefix in ("alsa:", "pulse:"):
        if spec.startswith(prefix):
            return spec[len(prefix) :] or "default", prefix[:-1], {}
    if spec.startswith("avfoundation:"):
        return spec[len("avfoundation:") :] or "0:0", "avfoundation", video_opts
    if spec in ("camera", "default"):
        if sys.platform == "darwin":
            return "0:0", "avfoundation", video_opts
        return "/dev/video0", "v4l2", video_opts
    return spec, None, {}


def open_source(spec: str, *, audio: bool = True, video: bool = True) -> Source:
    """``testsrc`` (pattern + tone), a media FILE (looped), or a DEVICE:
    ``/dev/videoN`` (v4l2), ``alsa:hw:0``, ``pulse:default``, ``avfoundation:0:0``,
    ``camera``; ``VIDEO+AUDIO`` takes the video of one and the sound of the other
    (``/dev/video0+pulse:default``). Raises :class:`UsageError` with what to do when it
    cannot be opened."""
    if "+" in spec and not Path(spec).exists():
        picture, _, sound = spec.partition("+")
        seen = open_source(picture, audio=False, video=video)
        try:
            heard = open_source(sound, audio=audio, video=False)
        except BaseException:
            seen.close()
            raise
        return Source(spec, heard.audio, seen.video)
    return _open_one(spec, audio=audio, video=video)


def _open_one(spec: str, *, audio: bool, video: bool) -> Source:
    if spec == "testsrc" or spec.startswith("testsrc:"):
        size = spec.partition(":")[2] or "640x480@30"
        try:
            dims, _, fps = size.partition("@")
            width, height = (int(v) for v in dims.split("x"))
            rate = float(fps or 30)
        except ValueError:
            raise UsageError(f"testsrc size must look like 640x480@30, not {size!r}") from None
        return Source(
            spec,
            Tone() if audio else None,
            TestPattern(width, height, rate) if video else None,
        )
    file, fmt, options = _device(spec)
    if fmt is None and not Path(file).exists():
        raise UsageError(
            f"source {spec!r} is not testsrc, an existing media file or a device "
            "(/dev/videoN, alsa:hw:0, pulse:default, avfoundation:0:0, camera)"
        )
    try:
        player = MediaPlayer(file, format=fmt, options=options)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise UsageError(f"cannot open source {spec!r}: {exc}") from None
    if fmt is None:  # a file: played over and over
        replay = Replay(file, player)
        return Source(
            spec,
            replay.track("audio") if audio and player.audio else None,
            replay.track("video") if video and player.video else None,
            player,
        )
    return Source(
        spec,
        player.audio if audio else None,
        player.video if video else None,
        player,
    )


class Replay:
    """A media file played from the start again each time it ends, its tracks on one
    continuous timeline. (MediaPlayer's own ``loop`` waits for ``StopIteration`` at the
    end of the file, which PyAV >= 14 no longer raises: it raises ``av.error.EOFError``,
    and the clip played once.)"""

    def __init__(self, file: str, player: MediaPlayer) -> None:
        self.file = file
        self.player = player
        self.generation = 0

    def track(self, kind: str) -> MediaStreamTrack:
        return _ReplayTrack(self, kind)

    def restart(self, seen: int) -> None:
        """Open the file again, once per end (both tracks see it end)."""
        if seen != self.generation:
            return
        old, self.player = self.player, MediaPlayer(self.file)
        self.generation += 1
        for track in (old.audio, old.video):
            if track is not None:
                track.stop()


class _ReplayTrack(MediaStreamTrack):
    def __init__(self, replay: Replay, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._replay = replay
        self._base = 0  # added to this pass's pts
        self._pass = replay.generation  # the pass (player) this track reads
        self._last: int | None = None
        self._step = 1

    async def recv(self) -> av.AudioFrame | av.VideoFrame:
        restarts = 0
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            if self._pass != self._replay.generation:  # a new pass: on from our last pts
                self._pass = self._replay.generation
                self._base = 0 if self._last is None else self._last + self._step
            try:
                frame = await getattr(self._replay.player, self.kind).recv()
            except MediaStreamError:
                restarts += 1
                if self.readyState != "live" or restarts > 2:
                    raise  # stopped, or a file that gives no frame at all
                self._replay.restart(self._pass)
                continue
            assert isinstance(frame, av.AudioFrame | av.VideoFrame)
            pts = (frame.pts or 0) + self._base
            if isinstance(frame, av.AudioFrame):
                self._step = frame.samples
            elif self._last is not None and pts > self._last:
                self._step = pts - self._last
            self._last = frame.pts = pts
            return frame

    def stop(self) -> None:
        super().stop()
        track = getattr(self._replay.player, self.kind)
        if track is not None:
            track.stop()


def peak(frame: av.AudioFrame) -> int:
    """The largest absolute sample of an ``s16`` frame (what decoders give), else 0."""
    if frame.format.name not in ("s16", "s16p"):
        return 0
    per_plane = 2 * frame.samples * (1 if frame.format.is_planar else len(frame.layout.channels))
    samples = array.array("h")
    for plane in frame.planes:
        samples.frombytes(bytes(plane)[:per_plane])
    return max(max(samples, default=0), -min(samples, default=0))


# -- the sink: count, measure, record ------------------------------------------------
@dataclass
class KindStats:
    frames: int = 0
    first_at: float | None = None
    width: int = 0
    height: int = 0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=90))
    # Audio only: frames with sound in them (a peak above SOUND_PEAK) and without; a
    # muted peer's frames still arrive, silent.
    sounding: int = 0
    quiet: int = 0

    def fps(self, now: float | None = None) -> float | None:
        """Frames a second over the last FPS_WINDOW seconds: None before any frame came
        (nothing measured), 0.0 once they stopped (not the last rate, frozen)."""
        if not self.recent:
            return None
        now = time.monotonic() if now is None else now
        times = [t for t in self.recent if now - t <= FPS_WINDOW]
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / max(now - times[0], times[-1] - times[0])


class MediaSink:
    """Consumes the remote tracks: counts frames (first-frame time, fps, resolution),
    reads test-pattern stamps (frame numbers, end-to-end latency) and, with
    ``record_to``, records them (:class:`apps.video.record.Recorder`)."""

    MAX_LATENCIES = 10_000

    def __init__(self, record_to: Path | None = None) -> None:
        self._relay = MediaRelay()
        # Created (0600) now: a place that cannot be written is refused before answering.
        self.recorder = Recorder(record_to) if record_to else None
        self._tasks: set[asyncio.Task[None]] = set()
        self.audio = KindStats()
        self.video = KindStats()
        self.stamps: deque[int] = deque(maxlen=self.MAX_LATENCIES)
        self.latencies_ms: deque[int] = deque(maxlen=self.MAX_LATENCIES)
        self.first_frame = asyncio.Event()
        self.first_video = asyncio.Event()
        self._recorder_started = False
        self.tracks: dict[str, MediaStreamTrack] = {}

    def subscribe(self, kind: str) -> MediaStreamTrack | None:
        """Another unbuffered reader of the remote ``kind`` track (None if none came)."""
        track = self.tracks.get(kind)
        return None if track is None else self._relay.subscribe(track, buffered=False)

    def add(self, track: MediaStreamTrack) -> None:
        """Consume a remote track; it stays available to others (the call page) as
        ``tracks[kind]`` through :meth:`subscribe`."""
        self.tracks[track.kind] = track
        consumer = self._relay.subscribe(track, buffered=False)
        if self.recorder is not None:
            self.recorder.add(self._relay.subscribe(track, buffered=False))
        task = asyncio.get_running_loop().create_task(self._consume(track.kind, consumer))
        self._tasks.add(task)

    async def start(self) -> None:
        if self.recorder is not None and not self._recorder_started:
            self._recorder_started = True
            self.recorder.start()

    async def _consume(self, kind: str, track: MediaStreamTrack) -> None:
        stats = self.video if kind == "video" else self.audio
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            stats.frames += 1
            stats.recent.append(now)
            if stats.first_at is None:
                stats.first_at = now
            if isinstance(frame, av.AudioFrame):
                if peak(frame) > SOUND_PEAK:
                    stats.sounding += 1
                else:
                    stats.quiet += 1
            elif isinstance(frame, av.VideoFrame):
                stats.width, stats.height = frame.width, frame.height
                self.first_video.set()
                stamp = read_stamp(frame)
                if stamp is not None:
                    self.stamps.append(stamp[0])
                    self.latencies_ms.append((wall_ms() - stamp[1]) & 0xFFFFFFFF)
            self.first_frame.set()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.recorder is not None:
            await self.recorder.close()
