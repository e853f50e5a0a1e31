"""Recording what a call receives (``mesh call answer --record-to FILE``).

The container follows the file's extension: ``.mkv`` and ``.mp4`` get H.264 and AAC,
``.webm`` VP8 and Opus. The file is created ``0600`` before the call is answered, so a
place that cannot be written (no such directory, no permission, an unknown extension)
is refused up front with the reason, and the call keeps ringing. What goes wrong later
(a full disk, a muxer refusing a packet) stops the recording, is kept as
:attr:`Recorder.error` and reported in the call's summary (``recording.error``; the CLI
exits 7) instead of leaving a silent, unreadable file.

Video is written at 30 frames a second on the frames' own clock: a frame that lands on
the same 1/30 s tick as the one before it (a browser's camera sends with jitter) is
dropped rather than given to the encoder with a repeated timestamp, which the MP4 muxer
refuses (aiortc's ``MediaRecorder`` wrote 48 unreadable bytes that way).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from core import UsageError

__all__ = ["FORMATS", "Recorder"]

log = logging.getLogger(__name__)

# extension: (FFmpeg format, video codec, audio codec)
FORMATS = {
    ".mkv": ("matroska", "libx264", "aac"),
    ".mp4": ("mp4", "libx264", "aac"),
    ".webm": ("webm", "libvpx", "libopus"),
}
VIDEO_RATE = 30
_TICK = fractions.Fraction(1, VIDEO_RATE)


@dataclass
class _Track:
    track: MediaStreamTrack
    stream: Any  # av VideoStream / AudioStream
    last: int | None = None  # the last pts written (the stream's time base)
    started: bool = False


class Recorder:
    """Writes the remote tracks of one call to ``path``; see the module doc."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        kind = FORMATS.get(self.path.suffix.lower())
        if kind is None:
            raise UsageError(
                f"cannot record to {self.path.name!r}: the file must end in " + ", ".join(FORMATS)
            )
        self._format, self._video_codec, self._audio_codec = kind
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise UsageError(f"cannot record to {self.path}: {exc.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UsageError(f"cannot record to {self.path}: not a regular file")
        os.fchmod(fd, 0o600)  # a file that was there already, too
        self._file = os.fdopen(fd, "w+b")
        try:
            self._container: Any = av.open(self._file, mode="w", format=self._format)
        except (av.FFmpegError, ValueError) as exc:
            self._file.close()
            raise UsageError(f"cannot record to {self.path}: {exc}") from None
        self._tracks: list[_Track] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.error: str | None = None
        self.frames = {"audio": 0, "video": 0}
        self._closed = False

    def add(self, track: MediaStreamTrack) -> None:
        """Record ``track`` (before :meth:`start`)."""
        if track.kind == "video":
            stream = self._container.add_stream(self._video_codec, rate=VIDEO_RATE)
            stream.pix_fmt = "yuv420p"
        else:
            stream = self._container.add_stream(self._audio_codec)
        self._tracks.append(_Track(track, stream))

    def start(self) -> None:
        for entry in self._tracks:
            self._tasks.append(asyncio.ensure_future(self._run(entry)))

    def _fail(self, what: str, exc: BaseException) -> None:
        if self.error is None:
            self.error = f"{what}: {exc}"
            log.warning("recording to %s failed: %s", self.path, self.error)

    async def _run(self, entry: _Track) -> None:
        while self.error is None:
            try:
                frame = await entry.track.recv()
            except MediaStreamError:
                return
            try:
                self._write(entry, frame)
            except (av.FFmpegError, ValueError, OSError) as exc:
                self._fail(f"writing {entry.track.kind}", exc)
                return

    def _write(self, entry: _Track, frame: Any) -> None:
        if isinstance(frame, av.VideoFrame):
            seconds = (frame.pts or 0) * (frame.time_base or fractions.Fraction(1, 90_000))
            pts = round(seconds / _TICK)
            if entry.last is not None and pts <= entry.last:
                return  # the same 1/30 s as the frame before: at 30 fps, one is enough
            if not entry.started:
                entry.stream.width, entry.stream.height = frame.width, frame.height
            frame.pts, frame.time_base = pts, _TICK
        else:
            step = frame.samples
            rate = fractions.Fraction(1, frame.sample_rate)
            pts = round((frame.pts or 0) * (frame.time_base or rate) / rate)
            if entry.last is not None and pts <= entry.last:
                pts = entry.last + step
            frame.pts, frame.time_base = pts, rate
        entry.started = True
        entry.last = pts
        for packet in entry.stream.encode(frame):
            self._container.mux(packet)
        self.frames[entry.track.kind] += 1

    async def close(self) -> None:
        """Stop, flush the encoders, close the file (once); :attr:`error` says if the
        recording could not be written whole."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            for entry in self._tracks:
                if entry.started:
                    for packet in entry.stream.encode(None):
                        self._container.mux(packet)
        except (av.FFmpegError, ValueError, OSError) as exc:
            self._fail("finishing", exc)
        finally:
            try:
                self._container.close()
            except (av.FFmpegError, ValueError, OSError) as exc:
                self._fail("closing", exc)
            with contextlib.suppress(OSError):
                self._file.close()

    def report(self) -> dict[str, Any]:
        """The summary's ``recording`` field."""
        try:
            size = self.path.stat().st_size
        except OSError:
            size = 0
        return {
            "path": str(self.path),
            "bytes": size,
            "video_frames": self.frames["video"],
            "audio_frames": self.frames["audio"],
            "error": self.error,
        }
