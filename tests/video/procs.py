"""`mesh up` node processes and `mesh` CLI runs for the call tests and the bench."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["MESH", "NodeUp", "cpu_seconds", "run_mesh", "spawn_mesh"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


MESH = [sys.executable, "-m", "core.cli.main"]


def run_mesh(data: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MESH, "--data-dir", str(data), *args], capture_output=True, text=True, timeout=timeout
    )


def spawn_mesh(data: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*MESH, "--data-dir", str(data), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


class NodeUp:
    """`mesh up` for one data dir, stopped with SIGINT (killed if it lingers)."""

    def __init__(self, data: Path, *args: str) -> None:
        self.data = data
        self.logfile = data.with_suffix(".log")
        data.mkdir(parents=True)
        argv = [*MESH, "--data-dir", str(data), "up", "--backend", "embedded", "--no-multicast"]
        with self.logfile.open("w") as out:
            self.proc = subprocess.Popen(
                [*argv, "--ring", "everyone", *args], stdout=out, stderr=out
            )
        self.status: dict[str, Any] = {}
        end = time.monotonic() + 60
        while not self.status.get("services", {}).get("video"):
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                raise AssertionError(f"mesh up did not come up:\n{self.logfile.read_text()}")
            done = run_mesh(data, "status", "--json")
            if done.returncode == 0:
                self.status = json.loads(done.stdout)
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
