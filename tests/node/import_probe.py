"""Run `mesh ARGS...` in this process, then print (as JSON, on the last line of stdout)
which heavy modules it imported. ``--idle DATA_DIR`` runs ``mesh up`` instead and
reports once the node and its services are up, then stops it with SIGINT.

Used by tests/node/test_idle_imports.py: the module table is the process's own, so
the check is exact, not a timing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

from core.cli.main import main

# Loaded only when used: a call (aiortc, av), the call page (aiohttp), the chat TUI
# (textual), a quic:// or ws:// peer (aioquic, websockets).
HEAVY = ("aiortc", "av", "aiohttp", "textual", "aioquic", "websockets")
UP_TIMEOUT = 60.0


def heavy_loaded() -> list[str]:
    return sorted(name for name in HEAVY if name in sys.modules)


def _report_when_up(data_dir: str) -> None:
    """From a thread: wait until `mesh status` shows the node and its services running."""
    deadline = time.monotonic() + UP_TIMEOUT
    status: dict[str, object] = {}
    while time.monotonic() < deadline:
        out = subprocess.run(
            [sys.executable, "-m", "core.cli.main", "--data-dir", data_dir, "status", "--json"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        if out.returncode == 0:
            status = json.loads(out.stdout)
            services = status.get("services") or {}
            if status.get("node") == "running" and services:
                break
        time.sleep(0.2)
    print(json.dumps({"status": status, "heavy": heavy_loaded()}), flush=True)
    os.kill(os.getpid(), signal.SIGINT)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--idle"]:
        data_dir = args[1]
        threading.Thread(target=_report_when_up, args=(data_dir,), daemon=True).start()
        main(["--data-dir", data_dir, "up", *args[2:]])
    else:
        try:
            code = main(args)
        except SystemExit as exc:  # --help
            code = int(exc.code or 0)
        print(json.dumps({"code": code, "heavy": heavy_loaded()}), flush=True)
