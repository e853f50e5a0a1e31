"""The docs/yggdrasil.md walkthrough, as users run it: `mesh up --backend yggdrasil
--managed` in two hosts, then `mesh status`, `mesh peers` and `mesh ping <address|key|key@mesh>`
through each node's control socket; SIGTERM stops the node and its daemon."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.fixtures import require_lab
from tests.lab.lab import Lab, MeshUp, mesh_cli

LISTEN_PORT = 12345
UP = ("--backend", "yggdrasil", "--managed", "--no-services", "--no-multicast")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_lab()
    with Lab("up") as lab:
        a, b = lab.host("a"), lab.host("b")
        lab.link(a, b)
        yield lab


def test_two_hosts_mesh_up_managed_then_ping(lab: Lab, tmp_path: Path) -> None:
    a, b = lab.hosts["a"], lab.hosts["b"]
    da, db = tmp_path / "a", tmp_path / "b"
    for d in (da, db):
        assert mesh_cli(d, "init").returncode == 0
    key_a = json.loads(mesh_cli(da, "init", "--json").stdout)["key"]
    up_a = a.mesh_up(da, *UP, "--if-name", "lb-tun", "--listen", f"tls://[::]:{LISTEN_PORT}")
    up_b: MeshUp | None = None
    try:
        up_b = b.mesh_up(db, *UP, "--if-name", "lb-tun", "--peer", a.peer_uri(b, LISTEN_PORT))
        for _ in range(150):  # until the peering is up
            status = json.loads(mesh_cli(db, "status", "--json").stdout)
            if any(p["up"] and p["key"] == key_a for p in status.get("peers", [])):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"B never peered with A: {status}")
        assert status["backend"] == "yggdrasil" and status["identity"] == "own"
        assert status["backend_status"]["mode"] == "managed"
        address_a = str(json.loads(mesh_cli(da, "status", "--json").stdout)["address"])
        # The first probes may go while the fresh mesh still converges (as with the
        # system ping); after that every probe must come back.
        first = mesh_cli(db, "ping", address_a, "-c", "6", "-i", "0.5", "--json")
        assert first.returncode == 0, first.stdout + first.stderr
        for target in (address_a, key_a, f"{key_a}@mesh"):
            ping = mesh_cli(db, "ping", target, "-c", "2", "-i", "0.1", "--json")
            assert json.loads(ping.stdout)["received"] == 2, ping.stdout + ping.stderr
        peers = json.loads(mesh_cli(db, "peers", "--json").stdout)
        assert [p["key"] for p in peers] == [key_a] and peers[0]["inbound"] is False
        daemon_a = int((da / "yggdrasil" / "daemon.pid").read_text())
    finally:
        if up_b is not None:
            up_b.stop()
        code = up_a.stop()
    assert code == 0, up_a.stderr
    assert not (da / "yggdrasil" / "daemon.pid").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(daemon_a, 0)
