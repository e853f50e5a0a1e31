"""Calls over real yggdrasil 0.5.12 daemons in network namespaces (``ca-…`` names):

- two hosts, each `mesh up --backend yggdrasil --managed` (TUN ``ca-tun``), calling with
  the `mesh call` CLI: candidates only in 200::/7, media over the TUN;
- an embedded node in this process peered with a daemon host, calling it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from apps.video.call import CallOptions
from core.config import NodeConfig
from core.identity import Identity
from core.node import Node
from tests.lab.fixtures import require_lab
from tests.lab.lab import REPO, Host, Lab, MeshUp, mesh_cli
from tests.video.helpers import phones

pytestmark = [pytest.mark.lab, pytest.mark.timeout(240)]

TUN = "ca-tun"
PORT = 12411
MESH = ipaddress.IPv6Network("200::/7")


class CallLab(Lab):
    """The shared lab harness, with this helper's namespace prefix (``ca-``)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.prefix = "ca-" + self.prefix.split("-", 1)[1]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_lab()
    with CallLab("vid") as lab:
        a, b = lab.host("a"), lab.host("b")
        lab.link(a, b)
        yield lab


def _up(host: Host, data: Path, *args: str) -> MeshUp:
    assert mesh_cli(data, "init").returncode == 0
    return host.mesh_up(
        data, "--backend", "yggdrasil", "--managed", "--if-name", TUN, "--no-multicast",
        "--ring", "everyone", *args,
    )  # fmt: skip


def _tun_bytes(host: Host) -> int:
    out = host.run("cat", f"/sys/class/net/{TUN}/statistics/rx_bytes").stdout
    return int(out.strip())


def _wait_status(data: Path, ok: object, timeout: float = 40) -> dict[str, object]:
    end = time.monotonic() + timeout
    status: dict[str, object] = {}
    while time.monotonic() < end:
        done = mesh_cli(data, "status", "--json")
        if done.returncode == 0:
            status = json.loads(done.stdout)
            if ok(status):  # type: ignore[operator]
                return status
        time.sleep(0.3)
    raise AssertionError(f"node not ready: {status}")


def test_a_call_between_two_daemon_hosts_stays_on_the_mesh(lab: Lab, tmp_path: Path) -> None:
    a, b = lab.hosts["a"], lab.hosts["b"]
    da, db = tmp_path / "a", tmp_path / "b"
    up_a = _up(a, da, "--listen", f"tls://[::]:{PORT}")
    up_b: MeshUp | None = None
    try:
        up_b = _up(b, db, "--peer", a.peer_uri(b, PORT))
        sa = _wait_status(da, lambda s: s.get("services", {}).get("video"))
        sb = _wait_status(db, lambda s: any(p["up"] for p in s.get("peers", [])))
        for _ in range(20):
            if mesh_cli(db, "ping", str(sa["address"]), "-c", "1", "-W", "1").returncode == 0:
                break
        rx_before = _tun_bytes(b)
        answer = subprocess.Popen(
            [sys.executable, "-m", "core.cli.main", "--data-dir", str(db),
             "call", "answer", "--auto", "--count", "1", "--json"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            time.sleep(0.5)
            done = mesh_cli(da, "call", str(sb["key"]), "--duration", "3", "--json", timeout=90)
            assert done.returncode == 0, done.stdout + done.stderr
            out, err = answer.communicate(timeout=60)
        finally:
            if answer.poll() is None:
                answer.kill()
                answer.wait()
        result = json.loads(done.stdout)
        assert result["result"] == "answered"
        assert result["video_frames_received"] > 30 and result["audio_frames_received"] > 50
        addresses = result["local_candidates"] + result["remote_candidates"]
        assert addresses == [sa["address"], sb["address"]]
        assert all(ipaddress.IPv6Address(x) in MESH for x in addresses)
        # The media crossed b's TUN: far more than signaling alone (~10 KB).
        assert _tun_bytes(b) - rx_before > 60_000
        assert json.loads(out.splitlines()[-1])["result"] == "answered", err
    finally:
        if up_b is not None:
            up_b.stop()
        up_a.stop()


async def test_an_embedded_node_calls_a_daemon_host(lab: Lab, tmp_path: Path) -> None:
    a = lab.hosts["a"]
    link = a.link_root(0x31)
    up: MeshUp | None = None
    try:
        da = tmp_path / "daemon-host"
        uri = f"tcp://[{link.host_addr}]:{PORT + 1}"
        up = await asyncio.to_thread(_up, a, da, "--listen", uri)
        status = await asyncio.to_thread(
            _wait_status, da, lambda s: s.get("services", {}).get("video")
        )
        config = NodeConfig(data_dir=tmp_path / "emb", backend="embedded", peers=(uri,))
        async with await Node.open(config, Identity.generate()) as node:
            target = ipaddress.IPv6Address(str(status["address"]))
            for _ in range(60):
                if (await node.ping(str(target), count=1, timeout=1))[0] is not None:
                    break
            answer = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "core.cli.main", "--data-dir", str(da),
                "call", "answer", "--auto", "--count", "1", "--json",
                cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            try:
                async with phones([node], tmp_path) as (phone,):
                    await asyncio.sleep(0.5)
                    await phone.service.place(str(status["key"]), CallOptions())
                    await phone.wait_state("active", timeout=30)
                    await asyncio.sleep(3)
                    await phone.service.control_methods()["call.hangup"]({})
                    summary = await phone.wait_event("call.ended")
                out, _ = await asyncio.wait_for(answer.communicate(), 60)
            finally:
                if answer.returncode is None:
                    answer.kill()
                    await answer.wait()
        assert summary["result"] == "answered"
        assert summary["video_frames_received"] > 30
        assert summary["local_candidates"] == [str(node.address)]
        assert summary["remote_candidates"] == [str(target)]
        assert json.loads(out.decode().splitlines()[-1])["video_frames_received"] > 30
    finally:
        if up is not None:
            await asyncio.to_thread(up.stop)
        link.close()
