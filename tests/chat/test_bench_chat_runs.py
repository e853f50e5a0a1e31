"""The chat benchmark still runs end to end (tiny sizes): both layouts (two processes,
one process), both latency figures, the sustained run and the store figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_chat_prints_every_figure_at_tiny_sizes(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests/bench/bench_chat.py"), "--latency", "5",
         "--burst", "30", "--conversation", "300", "--total", "600", "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    for where in ("two processes", "one process "):
        assert f"{where}: latency send -> committed at peer, one at a time (5 msgs)" in out.stdout
        assert f"{where}: latency send -> committed at peer, back to back  (5 msgs)" in out.stdout
        assert f"{where}: sustained: 30 msgs, all committed at B and receipted at A" in out.stdout
    assert "store: newest 200 of a 300-message conversation" in out.stdout
    assert not list(tmp_path.iterdir())  # its temporary directory is gone
