"""The docs/yggdrasil.md walkthrough, as users run it: `mesh up --backend yggdrasil
--managed` in two hosts, then `mesh status` and `mesh ping <address|key|key@mesh>`
through each node's control socket; SIGTERM stops the node and its daemon."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.fixtures import require_lab
from tests.lab.lab import REPO, Host, Lab

LISTEN_PORT = 12345


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_lab()
    with Lab("up") as lab:
        a, b = lab.host("a"), lab.host("b")
        lab.link(a, b)
        yield lab


def mesh(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core.cli.main", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def mesh_up(host: Host, data_dir: Path, *args: str) -> subprocess.Popen[str]:
    proc = host.spawn(
        "-m", "core.cli.main", "--data-dir", str(data_dir), "up", "--backend", "yggdrasil",
        "--managed", "--no-services", "--no-multicast", "--if-name", "lb-tun", *args,
    )  # fmt: skip
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    seen = ""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.2)
        if not ready:
            continue
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
        if line.startswith("mesh node up:"):
            return proc
    proc.kill()
    pytest.fail(f"mesh up did not come up:\n{seen}{proc.stderr.read()}")


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def test_two_hosts_mesh_up_managed_then_ping(lab: Lab, tmp_path: Path) -> None:
    a, b = lab.hosts["a"], lab.hosts["b"]
    da, db = tmp_path / "a", tmp_path / "b"
    for d in (da, db):
        assert mesh(d, "init").returncode == 0
    up_a = mesh_up(a, da, "--listen", f"tls://[::]:{LISTEN_PORT}")
    up_b: subprocess.Popen[str] | None = None
    try:
        up_b = mesh_up(b, db, "--peer", a.peer_uri(b, LISTEN_PORT))
        key_a = json.loads(mesh(da, "init", "--json").stdout)["key"]
        for _ in range(150):  # until the peering is up
            status = json.loads(mesh(db, "status", "--json").stdout)
            if any(p["up"] and p["key"] == key_a for p in status.get("peers", [])):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"B never peered with A: {status}")
        assert status["backend"] == "yggdrasil" and status["identity"] == "own"
        assert status["backend_status"]["mode"] == "managed"
        address_a = str(json.loads(mesh(da, "status", "--json").stdout)["address"])
        # The first probes may go while the fresh mesh still converges (as with the
        # system ping); after that every probe must come back.
        first = mesh(db, "ping", address_a, "-c", "6", "-i", "0.5", "--json")
        assert first.returncode == 0, first.stdout + first.stderr
        for target in (address_a, key_a, f"{key_a}@mesh"):
            ping = mesh(db, "ping", target, "-c", "2", "-i", "0.1", "--json")
            assert json.loads(ping.stdout)["received"] == 2, ping.stdout + ping.stderr
        daemon_a = int((da / "yggdrasil" / "daemon.pid").read_text())
    finally:
        if up_b is not None:
            stop(up_b)
        stop(up_a)
    assert up_a.returncode == 0
    assert not (da / "yggdrasil" / "daemon.pid").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(daemon_a, 0)
