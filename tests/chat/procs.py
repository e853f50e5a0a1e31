"""Real `mesh up` node processes and `mesh chat` runs for the chat CLI tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from core.identity import load_or_create_identity

__all__ = ["ChatProcess", "mesh", "node_key"]

CLI = [sys.executable, "-m", "core.cli.main"]


def mesh(
    data: Path, *argv: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """One `mesh --data-dir DATA ...` run, bounded in time."""
    return subprocess.run(
        [*CLI, "--data-dir", str(data), *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def node_key(data: Path) -> str:
    """The node key of a data dir (made now if the node never ran)."""
    data.mkdir(parents=True, exist_ok=True)
    identity, _ = load_or_create_identity(data)
    return identity.public_key.hex()


class ChatProcess:
    """`mesh up` (embedded backend) with the chat service; ``kill()`` is SIGKILL."""

    def __init__(self, data: Path, *extra: str) -> None:
        self.data = data
        data.mkdir(parents=True, exist_ok=True)
        self.log = data.parent / f"{data.name}.log"
        argv = [*CLI, "--data-dir", str(data), "up", "--backend", "embedded", "--no-multicast"]
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(
                [*argv, *extra], stdout=out, stderr=out, env={**os.environ, "PYTHONUNBUFFERED": "1"}
            )
        self.status = self._wait_chat()

    def _wait_chat(self) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            done = mesh(self.data, "status", "--json", timeout=20)
            if done.returncode == 0:
                status: dict[str, Any] = json.loads(done.stdout)
                chat = status.get("services", {}).get("chat")
                if isinstance(chat, dict) and "chat" in chat:
                    return status
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"mesh up never served chat:\n{self.log.read_text()[-3000:]}")

    @property
    def listen_uri(self) -> str:
        return str(self.status["backend_status"]["listening"][0])

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        """SIGINT (a clean stop), SIGKILL if it is still there after 20 s."""
        for sig, grace in ((signal.SIGINT, 20), (signal.SIGKILL, 10)):
            if self.proc.poll() is not None:
                return
            self.proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
