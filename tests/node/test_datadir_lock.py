"""One node per data dir, held by an OS lock (issue 14: a second `mesh up` deleted the
running node's control socket on its way out, and a third one then ran beside it)."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
from pathlib import Path

import pytest

from core.control.client import ControlClient
from core.control.server import ControlServer
from core.datadir import LOCK_FILE_NAME, DataDirBusy, DataDirLock
from core.errors import MeshError
from core.events import EventBus
from tests.node.test_first_run import NodeProc, mesh

pytestmark = pytest.mark.timeout(120)


def test_second_mesh_up_is_refused_and_the_first_node_keeps_running(tmp_path: Path) -> None:
    data = tmp_path / "node"
    first = NodeProc(data, "--no-multicast", "--no-services")
    try:
        before = sorted(p.name for p in data.iterdir())
        sock = (data / "control.sock").stat()
        second = mesh(data, "up", "--backend", "embedded", "--no-multicast", "--no-services")
        assert second.returncode == 2
        assert second.stderr.count("\n") == 1, second.stderr  # one line, no traceback
        assert "already running" in second.stderr and str(first.proc.pid) in second.stderr
        assert sorted(p.name for p in data.iterdir()) == before
        assert (data / "control.sock").stat().st_ino == sock.st_ino  # never touched
        status = first.wait_running(timeout=10)
        assert status["key"] == first.status["key"]
        # kill -9: the kernel drops the lock; a new node starts on the same dir
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)
        third = NodeProc(data, "--no-multicast", "--no-services")
        try:
            assert third.status["key"] == first.status["key"]
        finally:
            third.stop()
    finally:
        first.kill()


def test_lock_is_exclusive_and_freed_on_release(tmp_path: Path) -> None:
    with DataDirLock.acquire(tmp_path):
        with pytest.raises(DataDirBusy, match=f"pid {os.getpid()}"):
            DataDirLock.acquire(tmp_path)
        # another process cannot take it either (flock is per open file description)
        probe = subprocess.run(
            ["flock", "--nonblock", str(tmp_path / LOCK_FILE_NAME), "true"], timeout=10
        )
        assert probe.returncode != 0
    lock = DataDirLock.acquire(tmp_path)
    lock.release()
    fd = os.open(tmp_path / LOCK_FILE_NAME, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free after release
    finally:
        os.close(fd)


async def test_a_refused_control_server_leaves_the_running_ones_socket(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    running = ControlServer(path, EventBus())

    async def hello(params: dict[str, object]) -> str:
        return "still here"

    running.register("hello", hello)
    await running.start()
    try:
        second = ControlServer(path, EventBus())
        with pytest.raises(MeshError, match="already runs"):
            await second.start()
        await second.close()
        assert path.is_socket()
        async with await ControlClient.connect(path, timeout=3) as client:
            assert await client.call("hello") == "still here"
    finally:
        await running.close()
    assert not path.exists()  # its own socket, removed by its own close
