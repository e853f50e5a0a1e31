"""Chat over real yggdrasil 0.5.12 daemons in network namespaces (``ch-…`` names):

- two hosts, each `mesh up --backend yggdrasil --managed`: a message each way with the
  `mesh chat` CLI (sent, delivered, read), over the real TUN interfaces;
- an embedded node in this process (with the chat service) and a daemon host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apps.chat.config import ChatConfig
from apps.chat.service import ChatService
from core.config import NodeConfig
from core.identity import Identity
from core.node import Node
from tests.chat.nodes import settle
from tests.lab.fixtures import require_lab
from tests.lab.lab import Host, Lab, MeshUp, mesh_cli

pytestmark = [pytest.mark.lab, pytest.mark.timeout(240)]

TUN = "ch-tun"
PORT = 12511


UP = ("--backend", "yggdrasil", "--managed", "--if-name", TUN, "--no-multicast")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_lab()
    harness = Lab("chat")
    harness.prefix = "ch-" + harness.prefix.split("-", 1)[1]  # this helper's namespaces
    with harness:
        harness.link(harness.host("a"), harness.host("b"))
        yield harness


def _up(host: Host, data: Path, *args: str) -> MeshUp:
    initialised = mesh_cli(data, "init")
    assert initialised.returncode == 0, initialised.stderr
    return host.mesh_up(data, *UP, *args)


def _status(data: Path, ok: Any, timeout: float = 60) -> dict[str, Any]:
    end = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < end:
        done = mesh_cli(data, "status", "--json")
        if done.returncode == 0:
            status = json.loads(done.stdout)
            if ok(status):
                return status
        time.sleep(0.3)
    raise AssertionError(f"node not ready: {status}")


def _chat_up(status: dict[str, Any]) -> bool:
    chat = status.get("services", {}).get("chat")
    return isinstance(chat, dict) and "chat" in chat


def _history(data: Path, key: str) -> list[dict[str, Any]]:
    done = mesh_cli(data, "chat", "history", key, "--json")
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def test_chat_between_two_daemon_hosts(lab: Lab, tmp_path: Path) -> None:
    a, b = lab.hosts["a"], lab.hosts["b"]
    da, db = tmp_path / "a", tmp_path / "b"
    with contextlib.ExitStack() as running:
        running.callback(_up(a, da, "--listen", f"tls://[::]:{PORT}").stop)
        running.callback(_up(b, db, "--peer", a.peer_uri(b, PORT)).stop)
        sa = _status(da, _chat_up)
        sb = _status(db, lambda s: _chat_up(s) and any(p["up"] for p in s.get("peers", [])))
        ka, kb = str(sa["key"]), str(sb["key"])
        for data, key in ((da, kb), (db, ka)):  # contacts: receipts go to contacts only
            assert mesh_cli(data, "contacts", "add", key).returncode == 0
        done = mesh_cli(da, "chat", "send", f"{kb}@mesh", "over the daemons", "--wait",
                        "--timeout", "90", timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        got = _history(db, ka)
        assert [(m["body"], m["direction"], m["from"]) for m in got] == [
            ("over the daemons", "in", ka)
        ]
        back = mesh_cli(db, "chat", "send", ka, "and back", "--wait", "--timeout", "90",
                        timeout=120)  # fmt: skip
        assert back.returncode == 0, back.stdout + back.stderr
        assert mesh_cli(db, "chat", "read", ka).returncode == 0
        deadline = time.monotonic() + 60
        while _history(da, kb)[0]["state"] != "read" and time.monotonic() < deadline:
            time.sleep(0.3)
        assert [m["state"] for m in _history(da, kb)] == ["read", "received"]
        info = json.loads(mesh_cli(da, "status", "--json").stdout)["services"]["chat"]
        assert info["signing"] == "node key"


async def test_embedded_node_and_daemon_host_chat(lab: Lab, tmp_path: Path) -> None:
    host = lab.hosts["a"]
    listen = f"tcp://[{host.link_root(0x41).host_addr}]:{PORT + 1}"
    daemon_dir = tmp_path / "daemon-host"
    daemon = await asyncio.to_thread(_up, host, daemon_dir, "--listen", listen)
    try:
        status = await asyncio.to_thread(_status, daemon_dir, _chat_up)
        await _embedded_chats_with(status, daemon_dir, listen, tmp_path / "emb")
    finally:
        daemon.stop()


async def _reach(node: Node, address: str, listen: str) -> None:
    """Ping until the daemon host answers: the link to it must come up by itself (the
    static peer's redial), however late its daemon started listening."""
    deadline = time.monotonic() + 60  # bounded; tests/bench/bench_link_up.py times it
    while time.monotonic() < deadline:
        if (await node.ping(address, count=1, timeout=1))[0] is not None:
            return
    peers = [(p.uri, p.up, p.last_error) for p in await node.peers()]
    raise AssertionError(f"the daemon host {address} never answered over {listen}: {peers}")


async def _embedded_chats_with(
    status: dict[str, Any], daemon_dir: Path, listen: str, data: Path
) -> None:
    config = NodeConfig(data_dir=data, backend="embedded", peers=(listen,))
    async with await Node.open(config, Identity.generate()) as node:
        chat = ChatService(node, ChatConfig(retry_initial=2.0, retry_max=5.0), data)
        await chat.start()
        try:
            await _reach(node, str(status["address"]), listen)
            methods = chat.control_methods()
            peer = str(status["key"])
            added = await asyncio.to_thread(
                mesh_cli, daemon_dir, "contacts", "add", node.key.hex()
            )  # the daemon host sends receipts to contacts only
            assert added.returncode == 0, added.stderr
            sent = await methods["chat.send"]({"contact": peer, "body": "hi daemon"})

            async def delivered() -> bool:
                h = await methods["chat.history"]({"contact": peer})
                return bool(h["messages"][0]["state"] == "delivered")

            await settle("delivered to the daemon host", delivered, timeout=90)
            got = await asyncio.to_thread(_history, daemon_dir, node.key.hex())
            assert [m["id"] for m in got] == [sent["id"]]
            back = await asyncio.to_thread(
                mesh_cli, daemon_dir, "chat", "send", node.key.hex(), "hi embedded", "--wait"
            )
            assert back.returncode == 0, back.stdout + back.stderr
            h = await methods["chat.history"]({"contact": peer})
            assert [m["body"] for m in h["messages"]] == ["hi daemon", "hi embedded"]
        finally:
            await chat.close()
