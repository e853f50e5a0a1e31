"""A new person's first `mesh up`: nothing is an error, and the node says what to do.

Issue 14 (First run): no mail password is a setup step (INFO, and `mesh status` says
the command), a node with no peers says how to join the mesh, `mesh status` prints
IPv6 endpoints with brackets, and output piped to `head` ends quietly.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(120)

MESH = [sys.executable, "-m", "core.cli.main"]


def mesh(data: Path, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MESH, "--data-dir", str(data), *args], capture_output=True, text=True, timeout=60, **kw
    )


class NodeProc:
    """One `mesh [global args] up ...` process, its log in a file beside the data dir."""

    def __init__(
        self,
        data: Path,
        *up_args: str,
        global_args: tuple[str, ...] = (),
        preexec: Callable[[], None] | None = None,
    ) -> None:
        self.data = data
        self.log_path = data.parent / f"{data.name}.log"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [*MESH, *global_args, "--data-dir", str(data), "up", "--backend", "embedded",
                 *up_args],
                stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec,
            )  # fmt: skip
        try:
            self.status = self.wait_running()
        except BaseException:
            self.kill()
            raise

    def wait_running(self, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"mesh up exited: {self.log()}")
            out = mesh(self.data, "status", "--json")
            if out.returncode == 0:
                status: dict[str, Any] = json.loads(out.stdout)
                if status.get("node") == "running":
                    return status
            time.sleep(0.2)
        raise AssertionError(f"mesh up did not come up: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, grace: float = 20) -> None:
        """SIGINT, then SIGKILL after ``grace`` seconds."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                self.proc.wait(grace)
        self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProc]:
    """A first start: new data dir, no mail password, no peers, LAN discovery on but
    only on loopback (`lo` has no link-local address: no beacon leaves the machine)."""
    data = tmp_path_factory.mktemp("first") / "node"
    node = NodeProc(data, "--socks", "[::1]:0", "--multicast", "^lo$", global_args=("-v",))
    try:
        yield node
    finally:
        node.stop()


def test_first_run_without_mail_password_is_not_an_error(first_run: NodeProc) -> None:
    log = first_run.log()
    assert " ERROR " not in log, log
    assert "INFO core.process: service mail needs setup" in log
    assert "`mesh mail passwd`" in log


def test_status_says_mail_needs_setup_and_the_command(first_run: NodeProc) -> None:
    mail = first_run.wait_running()["services"]["mail"]
    assert list(mail) == ["needs setup"]
    assert "run `mesh mail passwd`" in mail["needs setup"]


def test_start_without_peers_says_how_to_join_once(first_run: NodeProc) -> None:
    log = first_run.log()
    assert log.count("no peers yet") == 1, log
    assert "mesh peers add tls://" in log
    assert "LAN discovery is on" in log
    assert "Joining the mesh" in log


def test_status_says_how_to_join_while_there_are_no_peers(first_run: NodeProc) -> None:
    text = mesh(first_run.data, "status").stdout
    assert "no peers yet" in text and "mesh peers add" in text
    assert "LAN discovery is on" in text
    assert "publicpeers" in text


def test_status_prints_ipv6_host_port_in_brackets(first_run: NodeProc) -> None:
    status = first_run.wait_running()
    listen = status["services"]["forwarding"]["socks5"]["listen"]
    assert listen.startswith("[::1]:") and listen.rsplit(":", 1)[1].isdigit()
    assert f"listen         {listen}" in mesh(first_run.data, "status").stdout


@pytest.mark.parametrize("args", [("status",), ("status", "--json"), ("peers",), ("--help",)])
def test_output_into_a_closed_pipe_exits_quietly(first_run: NodeProc, args: tuple[str]) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before we write a byte: every write is EPIPE
    try:
        out = subprocess.run(
            [*MESH, "--data-dir", str(first_run.data), *args],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert out.stderr == ""
    assert out.returncode in (0, 141)


def test_status_piped_to_head_exits_quietly(first_run: NodeProc) -> None:
    cmd = " ".join([*MESH, "--data-dir", str(first_run.data), "status"])
    for _ in range(5):
        out = subprocess.run(
            ["bash", "-c", f"{cmd} | head -1; echo rc=${{PIPESTATUS[0]}} >&2"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.stdout.count("\n") == 1
        assert out.stderr.startswith("rc=") and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.strip() in ("rc=0", "rc=141")
