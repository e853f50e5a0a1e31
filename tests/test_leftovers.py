"""The suite's own guard: what a test leaves running fails the run, which always ends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

LEAKY = """
import subprocess, threading, time

def test_leaves_a_thread_and_a_child():
    threading.Thread(target=time.sleep, args=(3,), name="leaky-worker").start()
    child = subprocess.Popen(["sleep", "600"])
    with open("child.pid", "w") as f:
        f.write(str(child.pid))

def test_clean():
    assert True
"""

STUCK = """
import threading

def test_leaves_a_thread_that_never_ends():
    threading.Thread(target=threading.Event().wait, name="stuck-worker").start()
"""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _run(tmp_path: Path, source: str, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_inner.py").write_text(source)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.leftovers", "-p", "no:cacheprovider",
         "test_inner.py"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip


@pytest.mark.slow
def test_threads_and_children_left_behind_are_named_and_fail_the_run(tmp_path: Path) -> None:
    done = _run(tmp_path, LEAKY)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "2 passed" in done.stdout
    assert "NON-DAEMON thread 'leaky-worker' left by test_inner.py::test_leaves" in done.stdout
    assert "child process" in done.stdout and "(sleep 600) left by" in done.stdout
    assert "killed" in done.stdout
    pid = int((tmp_path / "child.pid").read_text())
    assert not _running(pid), "the child was not killed"


@pytest.mark.slow
def test_the_interpreter_exits_even_if_a_thread_never_ends(tmp_path: Path) -> None:
    done = _run(tmp_path, STUCK, MESHSUITE_EXIT_GRACE="1")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "NON-DAEMON thread 'stuck-worker'" in done.stdout
    assert "did not exit 1 s after the tests" in done.stderr
