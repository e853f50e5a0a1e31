"""An idle node's memory and the CLI's start-up time, side by side in one run.

    .venv/bin/python -m tests.bench.bench_idle [--runs 7]

- idle `mesh up` RSS (embedded backend, no peers, LAN discovery off), with every
  service running (mail with a password, so its listeners are up) and with
  ``--no-services``; measured 3 s after `mesh status` first shows it running;
- start-up time of CLI verbs (wall clock of the whole process, median of ``--runs``):
  ``mesh --help``, and ``mesh status --json`` / ``mesh peers`` against that node;
  beside them a bare ``python -c pass`` (the interpreter's own floor).

Targets (issue 24): RSS < 50 MB, verbs < 150 ms. The machine may be shared: the load
average is printed first; compare rows of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MESH = [sys.executable, "-m", "core.cli.main"]
ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), capture_output=True, text=True, input=stdin, timeout=120, cwd=ROOT
    )


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def start_node(data: Path, *extra: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [*MESH, "--data-dir", str(data), "up", "--no-multicast", "--backend", "embedded",
         "--smtp", "127.0.0.1:0", "--imap", "127.0.0.1:0", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out = run(*MESH, "--data-dir", str(data), "status", "--json")
        if out.returncode == 0 and json.loads(out.stdout).get("node") == "running":
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    stop(proc)
    raise RuntimeError("mesh up did not come up")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def timed(args: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run(*args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main(args: argparse.Namespace) -> None:
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} CPUs\n")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp, "node")
        run(*MESH, "--data-dir", str(data), "init")
        run(*MESH, "--data-dir", str(data), "mail", "passwd", "--stdin", stdin="bench-pw\n")
        rss: dict[str, float] = {}
        for name, extra in (("all services", ()), ("--no-services", ("--no-services",))):
            proc = start_node(data, *extra)
            try:
                time.sleep(3)
                rss[name] = rss_mb(proc.pid)
            finally:
                stop(proc)
        print("idle `mesh up` RSS (target < 50 MB)")
        for name, value in rss.items():
            print(f"  {name:<34}{value:>8.1f} MB")
        proc = start_node(data)
        try:
            verbs = {
                "python -c pass (floor)": [sys.executable, "-c", "pass"],
                "mesh --help": [*MESH, "--help"],
                "mesh status --json": [*MESH, "--data-dir", str(data), "status", "--json"],
                "mesh peers": [*MESH, "--data-dir", str(data), "peers"],
            }
            print(f"\nCLI start-up, whole process (target < 150 ms), median of {args.runs}")
            for name, cmd in verbs.items():
                print(f"  {name:<34}{timed(cmd, args.runs):>8.0f} ms")
        finally:
            stop(proc)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    main(parser.parse_args())
