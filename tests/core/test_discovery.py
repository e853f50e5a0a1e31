"""LAN discovery speaks yggdrasil 0.5's beacon format, both ways, with a real daemon."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.discovery import Beacon, beacon_hash
from core.identity import Identity
from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]


def test_beacon_round_trips() -> None:
    key = bytes(range(32))
    b = Beacon(key, 4242, beacon_hash(key, b"pw"))
    raw = bytes(b)
    assert raw[:4] == b"\x00\x00\x00\x05"
    assert len(raw) == 4 + 32 + 4 + 64
    assert Beacon.parse(raw) == b


def test_password_changes_the_hash() -> None:
    key = bytes(32)
    assert beacon_hash(key) != beacon_hash(key, b"x")


@given(st.binary(max_size=200))
def test_parse_never_crashes(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        Beacon.parse(data)


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@pytest.fixture
def two_namespaces() -> Iterator[tuple[str, str, str, str]]:
    require(os.geteuid() == 0, "needs root for network namespaces")
    require(shutil.which("yggdrasil") is not None, "yggdrasil is not installed")
    tag = uuid.uuid4().hex[:6]
    a, b = f"dsc-{tag}-a", f"dsc-{tag}-b"
    va, vb = f"dsa{tag}", f"dsb{tag}"
    try:
        _sh("ip", "netns", "add", a)
        _sh("ip", "netns", "add", b)
        _sh("ip", "link", "add", va, "netns", a, "type", "veth", "peer", "name", vb, "netns", b)
        for ns, dev in ((a, va), (b, vb)):
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
            _sh("ip", "-n", ns, "link", "set", dev, "up")
        yield a, b, va, vb
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "pids", ns], capture_output=True)
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in pids.stdout.split():
                subprocess.run(["kill", "-9", pid], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _wait_link_local(ns: str, dev: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["ip", "-n", ns, "-6", "addr", "show", "dev", dev, "scope", "link"],
            capture_output=True,
            text=True,
        ).stdout
        if "fe80" in out and "tentative" not in out:
            return
        time.sleep(0.1)
    raise AssertionError(f"no link-local address on {dev} in {ns}")


def test_discovery_and_real_daemon_find_each_other(
    two_namespaces: tuple[str, str, str, str], tmp_path: Path
) -> None:
    a, b, va, vb = two_namespaces
    _wait_link_local(a, va)
    _wait_link_local(b, vb)
    daemon = Identity.generate()
    conf = {
        "PrivateKey": daemon.to_yggdrasil_hex(),
        "IfName": "none",
        "AdminListen": "none",
        "Listen": [],
        "Peers": [],
        "MulticastInterfaces": [
            {"Regex": va, "Beacon": True, "Listen": True, "Port": 0, "Priority": 0,
             "Password": "lan-pw"}
        ],
    }  # fmt: skip
    (tmp_path / "ygg.json").write_text(json.dumps(conf))
    log = open(tmp_path / "ygg.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        ["ip", "netns", "exec", a, "yggdrasil", "-useconffile", str(tmp_path / "ygg.json")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        out = subprocess.run(
            ["ip", "netns", "exec", b, sys.executable, str(ROOT / "tests/core/discovery_probe.py"),
             vb, "lan-pw", "20"],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
    # We heard the daemon's beacon, checked its password hash, and would dial it.
    assert result["dialled"], (tmp_path / "ygg.log").read_text()
    uri = result["dialled"][0]
    assert uri.startswith("tls://[fe80:") and f"%{vb}]" in uri
    assert f"key={daemon.public_key.hex()}" in uri and "password=lan-pw" in uri
    # The daemon heard our beacon and dialled the TLS port we announced.
    assert result["inbound"] and result["inbound"][0].startswith("1603")
