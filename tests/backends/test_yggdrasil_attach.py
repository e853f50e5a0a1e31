"""Attach mode against a real 0.5.12 daemon without a TUN (admin socket only), and what
a node says when the daemon is missing or vanishes. Traffic over a TUN is in the lab
(tests/lab/test_lab_*.py)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.address import address_for_key
from core.backends.yggdrasil import DaemonUnreachableError, YggdrasilBackend
from core.config import NodeConfig
from core.errors import MeshError
from core.identity import Identity, load_identity
from core.node import Node
from tests.conftest import require

YGG = "/usr/sbin/yggdrasil"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    require(os.path.exists(YGG), f"needs the yggdrasil daemon at {YGG}")
    config = json.loads(subprocess.run([YGG, "-genconf", "-json"], capture_output=True).stdout)
    sock = tmp_path / "admin.sock"
    config.update(
        AdminListen=f"unix://{sock}", IfName="none", MulticastInterfaces=[], Listen=[], Peers=[]
    )
    (tmp_path / "y.conf").write_text(json.dumps(config))
    proc = subprocess.Popen(
        [YGG, "-useconffile", str(tmp_path / "y.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"unix://{sock}", proc
    finally:
        proc.kill()
        proc.wait()


def config(tmp_path: Path, endpoint: str, backend: str = "auto") -> NodeConfig:
    return NodeConfig(
        data_dir=tmp_path / "node",
        backend=backend,  # type: ignore[arg-type]
        admin_endpoint=endpoint,
        services={"yggdrasil": {"poll_interval": 0.1}},
    )


async def _open(cfg: NodeConfig, identity: Identity | None = None) -> Node:
    for _ in range(100):
        try:
            return await Node.open(cfg, identity)
        except DaemonUnreachableError:
            await asyncio.sleep(0.05)
    return await Node.open(cfg, identity)


async def test_auto_selects_a_running_daemon_and_takes_its_key(
    tmp_path: Path, daemon: tuple[str, subprocess.Popen[bytes]]
) -> None:
    endpoint, _ = daemon
    mine = Identity.generate()
    async with await _open(config(tmp_path, endpoint, "yggdrasil"), mine) as node:
        assert isinstance(node.backend, YggdrasilBackend)
        assert node.key != mine.public_key and node.identity is None  # the daemon's key
        assert node.address == address_for_key(node.key)
        status = await node.status()
        assert status["identity"] == "daemon's key" and status["peers"] == []
        assert status["backend_status"]["tun"] is None
        assert await node.key_for_address(address_for_key(b"\x01" * 32)) is None
        with pytest.raises(MeshError, match="no TUN interface"):
            await node.start_server(lambda r, w: None, 5000)
        with pytest.raises(MeshError, match="no TUN interface"):
            await node.ping(node.address, count=1)
    async with await _open(config(tmp_path, endpoint)) as node:
        assert "auto: a daemon answers" in node.backend_reason


async def test_a_vanished_daemon_is_reported(
    tmp_path: Path, daemon: tuple[str, subprocess.Popen[bytes]]
) -> None:
    endpoint, proc = daemon
    node = await _open(config(tmp_path, endpoint, "yggdrasil"))
    async with node, node.events.subscribe() as events:
        proc.kill()
        proc.wait()
        event = await asyncio.wait_for(events.get(), 10)
        assert event is not None and event.kind == "daemon.unreachable"
        with pytest.raises(DaemonUnreachableError, match="no yggdrasil daemon is listening"):
            await node.peers()
        with pytest.raises(DaemonUnreachableError):
            await node.status()


async def test_no_daemon_at_all(tmp_path: Path) -> None:
    cfg = config(tmp_path, f"unix://{tmp_path}/none.sock", "yggdrasil")
    with pytest.raises(DaemonUnreachableError, match=r"systemctl start yggdrasil"):
        await Node.open(cfg)


def _mesh(data_dir: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core.cli.main", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )


def _genconf() -> dict[str, object]:
    out = subprocess.run([YGG, "-genconf", "-json"], capture_output=True, check=True).stdout
    value = json.loads(out)
    assert isinstance(value, dict)
    return value


def _start(config: dict[str, object], tmp_path: Path) -> subprocess.Popen[bytes]:
    (tmp_path / "shared.conf").write_text(json.dumps(config))
    return subprocess.Popen(
        [YGG, "-useconffile", str(tmp_path / "shared.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_one_identity_shared_both_ways(tmp_path: Path) -> None:
    """docs/yggdrasil.md "Sharing one identity": the daemon runs with the suite's key
    (`mesh key export --format pem` as PrivateKeyPath), or the suite imports the
    daemon's (`mesh key import -`); either way the attached node keeps its identity."""
    require(os.path.exists(YGG), f"needs the yggdrasil daemon at {YGG}")
    suite = tmp_path / "suite"
    assert _mesh(suite, "init").returncode == 0
    pem = tmp_path / "node.pem"
    pem.write_text(_mesh(suite, "key", "export", "--format", "pem").stdout)
    pem.chmod(0o600)
    config = _genconf()
    generated_key = config.pop("PrivateKey")
    sock = tmp_path / "admin.sock"
    config.update(
        PrivateKeyPath=str(pem), AdminListen=f"unix://{sock}", IfName="none",
        MulticastInterfaces=[], Listen=[], Peers=[],
    )  # fmt: skip
    identity = load_identity(suite / "node.key")
    proc = _start(config, tmp_path)
    try:
        async with await _open(config_for(tmp_path, f"unix://{sock}"), identity) as node:
            assert node.key == identity.public_key and node.identity is identity
            assert (await node.status())["identity"] == "own"
    finally:
        proc.kill()
        proc.wait()
    # the other way: the daemon keeps its generated key, the suite imports it
    del config["PrivateKeyPath"]
    config["PrivateKey"] = generated_key
    other = tmp_path / "other"
    imported = _mesh(other, "key", "import", "-", "--json", stdin=json.dumps(config))
    assert imported.returncode == 0, imported.stderr
    identity = load_identity(other / "node.key")
    proc = _start(config, tmp_path)
    try:
        async with await _open(config_for(tmp_path, f"unix://{sock}"), identity) as node:
            assert (
                node.identity is identity and node.key.hex() == json.loads(imported.stdout)["key"]
            )
    finally:
        proc.kill()
        proc.wait()


def config_for(tmp_path: Path, endpoint: str) -> NodeConfig:
    return config(tmp_path, endpoint, "yggdrasil")
