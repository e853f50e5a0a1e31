"""LAN discovery end to end: an embedded `mesh up` and a real 0.5.12 daemon on one
link find each other by multicast beacons and peer over TLS on link-local addresses."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.identity import Identity
from tests.lab.fixtures import require_lab
from tests.lab.lab import REPO, Lab

pytestmark = pytest.mark.lab


@pytest.fixture
def lan() -> Iterator[Lab]:
    require_lab()
    with Lab("lan") as lab:
        a, b = lab.host("a"), lab.host("b")
        lab.link(a, b)
        yield lab


def _wait(what: str, probe: object, timeout: float = 40) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()  # type: ignore[operator]
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_embedded_node_and_daemon_peer_by_lan_discovery(lan: Lab, tmp_path: Path) -> None:
    a, b = lan.hosts["a"], lan.hosts["b"]
    daemon_key = Identity.generate()
    beacon = {"Regex": a.link_ifname(b), "Beacon": True, "Listen": True, "Port": 0,
              "Priority": 0, "Password": ""}  # fmt: skip
    daemon = a.start_daemon(
        private_key=daemon_key.to_yggdrasil_hex(), if_name="none", multicast=[beacon]
    )
    data = tmp_path / "node"
    node = b.spawn(
        "-m", "core.cli.main", "--data-dir", str(data), "up", "--backend", "embedded",
        "--no-services", "--multicast", b.link_ifname(a),
    )  # fmt: skip
    try:

        def node_peers() -> list[dict[str, object]]:
            out = subprocess.run(
                [sys.executable, "-m", "core.cli.main", "--data-dir", str(data), "peers", "--json"],
                capture_output=True, text=True, cwd=REPO, timeout=30,
            )  # fmt: skip
            if out.returncode != 0:
                return []
            return [p for p in json.loads(out.stdout) if p["up"]]

        peers = _wait("the embedded node to peer with the daemon", node_peers)
        assert isinstance(peers, list)
        assert peers[0]["key"] == daemon_key.public_key.hex()
        assert str(peers[0]["uri"]).startswith("tls://[fe80:")
        # The daemon sees the node too.
        keys = [p.get("key") for p in daemon.ctl("getPeers").get("peers", [])]
        status = subprocess.run(
            [sys.executable, "-m", "core.cli.main", "--data-dir", str(data), "status", "--json"],
            capture_output=True, text=True, cwd=REPO, timeout=30,
        )  # fmt: skip
        assert json.loads(status.stdout)["key"] in keys, keys
    finally:
        node.terminate()
        node.communicate(timeout=20)
        daemon.stop()
