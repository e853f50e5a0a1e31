"""Out of file descriptors under a flood (issue 14: a normal `ulimit -n 1024`, 134,000
identical tracebacks in 40 s, and a control socket that stopped answering)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import resource
import socket
import time
from pathlib import Path

import pytest

from core.resources import AcceptErrorThrottle, MemoryTrimmer
from tests.node.test_first_run import NodeProc, mesh

pytestmark = pytest.mark.timeout(120)


def _start(data: Path, soft: int, hard: int) -> NodeProc:
    """`mesh up` with an embedded tls:// listener, under RLIMIT_NOFILE soft/hard."""

    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return NodeProc(
        data, "--no-multicast", "--no-services", "--listen", "tls://[::1]:0",
        global_args=("-v",), preexec=preexec,
    )  # fmt: skip


def _open_files_limit(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-files line in /proc/PID/limits")


def test_soft_open_files_limit_is_raised_to_the_hard_limit(tmp_path: Path) -> None:
    node = _start(tmp_path / "node", 256, 2048)
    try:
        assert _open_files_limit(node.proc.pid) == (2048, 2048)
    finally:
        node.stop()


def test_flood_under_a_low_fd_limit_keeps_the_log_small_and_control_answering(
    tmp_path: Path,
) -> None:
    node = _start(tmp_path / "node", 128, 128)
    held: list[socket.socket] = []
    try:
        uri = node.status["backend_status"]["listening"][0]
        host, port = uri.removeprefix("tls://").rsplit(":", 1)
        size_before = len(node.log())
        deadline = time.monotonic() + 8
        answered = 0
        while time.monotonic() < deadline:
            for _ in range(100):  # stalled handshakes: connect, never send a byte
                s = socket.socket(socket.AF_INET6)
                s.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    s.connect((host.strip("[]"), int(port)))
                held.append(s)
            while len(held) > 1500:
                held.pop(0).close()
            out = mesh(node.data, "status", "--json")
            assert out.returncode == 0, out.stderr
            assert json.loads(out.stdout)["node"] == "running"
            answered += 1
        grown = node.log()[size_before:]
        assert answered >= 3
        assert len(grown) < 4000, grown[-3000:]
        assert "Traceback" not in grown
        assert node.proc.poll() is None
    finally:
        for s in held:
            s.close()
        node.stop()


def test_out_of_descriptor_errors_are_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="core.resources")
    now = [0.0]
    throttle = AcceptErrorThrottle(interval=10.0, clock=lambda: now[0])
    loop = asyncio.new_event_loop()
    try:
        throttle.install(loop)
        handler = loop.get_exception_handler()
        assert handler is throttle
        context = {
            "message": "socket.accept() out of system resource",
            "exception": OSError(errno.EMFILE, "Too many open files"),
        }
        for _ in range(1000):
            throttle(loop, context)
            now[0] += 0.009  # 1000 errors in 9 s: one line
        now[0] = 10.0
        throttle(loop, context)  # the next interval: one more line, with the count
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 2, lines
        assert "999 more since the last report" in lines[1]
        throttle.uninstall(loop)
        assert loop.get_exception_handler() is None
    finally:
        loop.close()


def test_heap_is_trimmed_after_a_burst_of_connections_not_on_every_close() -> None:
    now = [0.0]
    trims: list[float] = []
    trimmer = MemoryTrimmer(after=64, interval=5.0, clock=lambda: now[0],
                            trim=lambda: trims.append(now[0]))  # fmt: skip
    trimmer.ended(63)
    now[0] = 100.0
    assert not trimmer.maybe_trim(quiet=True)  # too few ended: nothing to give back
    trimmer.ended()
    assert trimmer.maybe_trim()  # a burst, and the interval passed
    trimmer.ended(1000)
    now[0] = 101.0
    assert not trimmer.maybe_trim()  # still flooding: at most once per interval
    assert trimmer.maybe_trim(quiet=True)  # the flood is over: at once
    assert trims == [100.0, 101.0]
