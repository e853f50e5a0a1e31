"""A busy node stops on SIGTERM by itself and loses nothing it acknowledged.

Runs tests/bench/bench_sigterm.py for a few rounds (chat both ways, mail both ways, an
IMAP IDLE open, SIGTERM at random moments, then every acknowledged message checked where
it belongs). No time target here (a loaded CI machine is slow): a stop that needs a
SIGKILL fails, as does anything lost. The 20-round figure and the 10 s target are the
benchmark's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigterm_at_random_moments_under_chat_and_mail_traffic() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests/bench/bench_sigterm.py"), "--rounds", "3",
         "--load", "0", "--target", "0", "--seed", "7"],
        capture_output=True, text=True, timeout=840, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "killed after 60 s: 0" in done.stdout
    assert "lost: 0" in done.stdout
    assert done.stdout.count("B stopped in") == 3
