"""Recording what a call receives: refused up front with the reason when the file
cannot be written, created 0600, valid in every container the CLI accepts (also from
a jittery camera, which aiortc's MediaRecorder turned into 48 unreadable bytes in MP4),
and a failure while writing is reported, not swallowed."""

from __future__ import annotations

import asyncio
import fractions
import json
import subprocess
import sys
from pathlib import Path

import av
import pytest
from aiortc import MediaStreamTrack

from apps.video.media import TestPattern, Tone
from apps.video.record import FORMATS, Recorder
from core import UsageError
from core.cli.main import main

REPO = Path(__file__).resolve().parents[2]


class _Jittery(MediaStreamTrack):
    """The test pattern as a browser's camera reaches a callee: ~30 fps, with frames
    now and then 5 ms apart (two on one 1/30 s tick), then the stream ends."""

    kind = "video"

    def __init__(self, frames: int) -> None:
        super().__init__()
        self._pattern = TestPattern(320, 240, 60)
        self._n = 0
        self._frames = frames

    async def recv(self) -> av.VideoFrame:
        from aiortc.mediastreams import MediaStreamError

        if self._n >= self._frames:
            raise MediaStreamError
        frame = await self._pattern.recv()
        ms = self._n * 33 + (5 if self._n % 4 == 1 else 0) - (28 if self._n % 4 == 2 else 0)
        frame.pts, frame.time_base = ms * 90, fractions.Fraction(1, 90_000)
        self._n += 1
        return frame


class _Sound(MediaStreamTrack):
    kind = "audio"

    def __init__(self, frames: int) -> None:
        super().__init__()
        self._tone, self._n, self._frames = Tone(), 0, frames

    async def recv(self) -> av.AudioFrame:
        from aiortc.mediastreams import MediaStreamError

        if self._n >= self._frames:
            raise MediaStreamError
        self._n += 1
        return await self._tone.recv()


async def _record(path: Path) -> Recorder:
    recorder = Recorder(path)
    recorder.add(_Jittery(60))
    recorder.add(_Sound(100))
    recorder.start()
    for _ in range(400):
        if recorder.frames["video"] >= 40 and recorder.frames["audio"] >= 100:
            break
        await asyncio.sleep(0.01)
    await recorder.close()
    return recorder


@pytest.mark.parametrize("suffix", list(FORMATS))
async def test_a_jittery_call_records_a_valid_file_in_every_container(
    tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"call{suffix}"
    path.write_bytes(b"old")
    path.chmod(0o644)
    recorder = await _record(path)
    assert recorder.error is None
    assert path.stat().st_mode & 0o777 == 0o600
    video = audio = 0
    with av.open(str(path)) as container:
        for frame in container.decode(*container.streams):
            if isinstance(frame, av.VideoFrame):
                video += 1
            else:
                audio += 1
    assert video >= 40 and audio > 0, (video, audio)
    report = recorder.report()
    assert report["error"] is None and report["bytes"] == path.stat().st_size > 1000


@pytest.mark.parametrize(
    ("name", "reason"),
    [("nodir/x.mkv", "No such file or directory"), ("x.avi", "must end in .mkv, .mp4, .webm")],
)
def test_a_recording_that_cannot_be_made_is_refused_with_the_reason(
    tmp_path: Path, name: str, reason: str
) -> None:
    with pytest.raises(UsageError, match=reason):
        Recorder(tmp_path / name)


def test_mesh_call_answer_refuses_an_unwritable_recording_before_anything_rings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--data-dir", str(tmp_path), "call", "answer", "--auto", "--record-to"]
    assert main([*args, "/nonexistent/x.mkv"]) == 2
    assert "no such directory /nonexistent" in capsys.readouterr().err
    assert main([*args, str(tmp_path / "x.avi")]) == 2
    assert ".mkv, .mp4, .webm" in capsys.readouterr().err


FULL_DISK = """
import asyncio, json, resource, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from tests.video.test_record import _record
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
print(json.dumps(asyncio.run(_record(Path(sys.argv[1]))).report()))
"""


def test_a_recording_that_fails_while_writing_reports_the_error(tmp_path: Path) -> None:
    """The file system refuses more than 20 kB (as a full disk would)."""
    path = tmp_path / "call.mp4"
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(path), str(REPO)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["error"] and "File too large" in report["error"], report
