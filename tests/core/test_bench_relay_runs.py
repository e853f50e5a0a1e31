"""The relay benchmark still runs end to end at tiny sizes and prints every figure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_relay_prints_every_figure_at_tiny_sizes(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests/bench/bench_relay.py"), "--items", "60",
         "--big", "1", "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    for figure in (
        "hand-off latency, put -> committed at relay",
        "hand-off, RelayService.submit in batches",
        "relay disk per held item",
        "hand-off of 1 x 10 MB",
        "fetch at start, 60 x 1 KiB + 1 x 10 MB",
    ):
        assert figure in out.stdout, out.stdout
    assert not list(tmp_path.iterdir())
