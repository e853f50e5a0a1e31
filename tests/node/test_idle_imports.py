"""An idle node and the CLI verbs import nothing heavy: aiortc and av load with the
first call, aiohttp with the first visit of the call page, textual with the chat TUI,
aioquic and websockets with a quic:// or ws:// peer.

Each check runs in a fresh interpreter (tests/node/import_probe.py) and reads that
process's own module table: exact, and no timing. Start-up time and idle RSS are
measured by tests/bench/bench_idle.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

PROBE = [sys.executable, "-m", "tests.node.import_probe"]
ROOT = Path(__file__).resolve().parents[2]


def probe(*args: str, stdin: str | None = None) -> dict[str, Any]:
    out = subprocess.run(
        [*PROBE, *args], capture_output=True, text=True, input=stdin, timeout=120, cwd=ROOT
    )
    lines = out.stdout.strip().splitlines()
    assert lines, f"probe printed nothing: {out.stderr[-2000:]}"
    report: dict[str, Any] = json.loads(lines[-1])
    return report


@pytest.fixture(scope="module")
def idle_node(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An idle `mesh up` with every service running; its report once it is up."""
    data = tmp_path_factory.mktemp("idle") / "node"
    assert probe("--data-dir", str(data), "init")["code"] == 0
    passwd = probe("--data-dir", str(data), "mail", "passwd", "--stdin", stdin="pw-for-test\n")
    assert passwd["code"] == 0
    return probe(
        "--idle", str(data), "--no-multicast", "--backend", "embedded",
        "--listen", "tcp://127.0.0.1:0", "--smtp", "127.0.0.1:0", "--imap", "127.0.0.1:0",
    )  # fmt: skip


def test_an_idle_node_with_all_services_up_has_imported_nothing_heavy(
    idle_node: dict[str, Any],
) -> None:
    services = idle_node["status"]["services"]
    assert {"chat", "mail", "video"} <= set(services), services
    assert "needs setup" not in services["mail"], services["mail"]
    assert services["video"]["page"].startswith("http://127.0.0.1:")  # bound, not served
    assert idle_node["heavy"] == []


@pytest.mark.parametrize(
    "verb",
    [
        ["--help"],
        ["status"],
        ["peers"],
        ["contacts", "list"],
        ["chat", "--help"],
        ["mail", "queue"],
        ["call", "log"],
    ],
    ids=" ".join,
)
def test_cli_verbs_import_nothing_heavy(verb: list[str], tmp_path: Path) -> None:
    report = probe("--data-dir", str(tmp_path / "none"), *verb)
    assert report["heavy"] == []
