"""`mesh status` for people rounds floats (uptime, latencies, rates); `--json` keeps
the node's numbers as they are. Against a stand-in node (tests/core/fake_control.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.cli.main import main
from core.cli.output import human
from tests.core.fake_control import fake_node, short_data_dir

STATUS = {
    "backend": "embedded",
    "uptime_s": 1234.567891234,
    "backend_status": {"rx_rate_bps": 98765.4321987, "links": 1},
    "peers": [{"uri": "tcp://127.0.0.1:1", "latency_ms": 3.14159265358, "up": True}],
    "probe_s": 0.000123456789,
}


data = pytest.fixture(short_data_dir, name="data")


def test_status_for_people_rounds_floats_at_every_level(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with fake_node(data, {"status": STATUS}):
        assert main(["--data-dir", str(data), "status"]) == 0
    out = capsys.readouterr().out
    assert "uptime_s" in out and "1234.57" in out and "1234.5678" not in out
    assert "rx_rate_bps  98765.43\n" in out
    assert "latency_ms=3.14," in out
    assert "0.000123\n" in out and "0.0001234" not in out


def test_status_json_keeps_the_nodes_numbers(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with fake_node(data, {"status": STATUS}):
        assert main(["--data-dir", str(data), "status", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got == {**STATUS, "node": "running"}


@pytest.mark.parametrize(
    ("value", "said"),
    [(2.0, "2"), (0.0, "0"), (12.345678, "12.35"), (0.00456789, "0.00457"), (7, "7"),
     (None, "None"), ("a", "a")],
)  # fmt: skip
def test_human_rounds_only_floats(value: object, said: str) -> None:
    assert human(value) == said
