"""``--data-dir`` before or after the command (``scripts/quickstart --data-dir DIR`` runs
``mesh up --data-dir DIR``)."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.cli.main import build_parser

MESH = [sys.executable, "-m", "core.cli.main"]

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(
    "argv",
    [
        ["up", "--data-dir", "/d"],
        ["--data-dir", "/d", "up"],
        ["up", "--backend", "embedded", "--data-dir=/d", "--no-multicast"],
        ["mail", "queue", "--data-dir", "/d"],
        ["contacts", "list", "--json", "--data-dir", "/d"],
        ["call", "log", "--data-dir", "/d"],
        ["status", "--data-dir", "/d"],
    ],
)
def test_data_dir_is_accepted_before_or_after_the_command(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).data_dir == "/d"


def test_data_dir_after_the_command_wins_and_none_given_stays_none() -> None:
    parser = build_parser()
    assert parser.parse_args(["--data-dir", "/a", "up", "--data-dir", "/b"]).data_dir == "/b"
    assert parser.parse_args(["up"]).data_dir is None
    assert parser.parse_args(["mail", "queue"]).data_dir is None


def test_init_with_data_dir_after_the_command_creates_the_key_there(tmp_path: Path) -> None:
    data = tmp_path / "second"
    out = subprocess.run(
        [*MESH, "init", "--json", "--data-dir", str(data)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["created"] is True
    assert (data / "node.key").exists()


def test_mesh_up_with_data_dir_after_up_runs_a_node_on_that_dir(tmp_path: Path) -> None:
    data = tmp_path / "node-b"
    log_path = tmp_path / "up.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [*MESH, "up", "--data-dir", str(data), "--backend", "embedded", "--no-multicast",
             "--no-services"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        status: dict[str, object] = {}
        while time.monotonic() < deadline and status.get("node") != "running":
            assert proc.poll() is None, log_path.read_text()
            out = subprocess.run(
                [*MESH, "status", "--json", "--data-dir", str(data)],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            status = json.loads(out.stdout) if out.returncode == 0 else {}
            time.sleep(0.2)
        assert status.get("node") == "running", log_path.read_text()
        assert (data / "control.sock").exists() and (data / "node.key").exists()
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.wait(20)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
