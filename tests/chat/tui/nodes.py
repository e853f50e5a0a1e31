"""Real nodes for the UI tests: each one is what `mesh up` runs (core's NodeProcess with
the chat service from apps/chat, its control socket), embedded backend, peered over
loopback TCP, in this process. The UI under test gets a ChatClient on the socket; the
test drives the other side through its own ChatClient.

    async with chat_nodes(tmp_path, 2) as (a, b):
        app = ChatApp(a.client, contact=b.key)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apps.chat.tui.client import ChatClient
from core.config import NodeConfig
from core.identity import Identity
from core.process import NodeProcess
from core.service import ServicePlugin, discover_services
from tests.conftest import require

START_TIMEOUT = 30.0


@dataclass
class ChatNode:
    process: NodeProcess
    client: ChatClient
    key: str
    task: asyncio.Task[None]
    stop: asyncio.Event

    @property
    def socket(self) -> Path:
        return self.process.config.control_socket

    async def call(self, method: str, **params: Any) -> Any:
        return await self.client.call(method, **params)


def chat_plugin() -> ServicePlugin:
    """The chat service's plug-in, as `mesh up` finds it (or from the source tree when
    the installed entry points predate it)."""
    plugins = [p for p in discover_services() if p.name == "chat"]
    if plugins:
        return plugins[0]
    try:
        from apps.chat import plugin
    except ImportError as exc:
        require(False, f"the chat service (apps/chat, issue 10) is not there: {exc}")
        raise
    return ServicePlugin(
        "chat", plugin.create_service, plugin.add_up_arguments, plugin.up_overrides
    )


async def _start(
    config: NodeConfig, plugins: list[ServicePlugin], configs: Mapping[str, Mapping[str, Any]]
) -> ChatNode:
    identity = Identity.generate()
    process = NodeProcess(config, identity, plugins, configs)
    stop = asyncio.Event()
    task = asyncio.create_task(process.run(stop))
    ready = asyncio.create_task(process.ready.wait())
    done, _ = await asyncio.wait(
        {task, ready}, timeout=START_TIMEOUT, return_when="FIRST_COMPLETED"
    )
    if ready not in done:
        ready.cancel()
        stop.set()
        with contextlib.suppress(Exception):
            await task
        raise AssertionError(f"node in {config.data_dir} did not start: {process.failed}")
    for plugin in plugins:
        assert plugin.name in process.services, f"{plugin.name} not running: {process.failed}"
    client = await ChatClient.connect(config.control_socket)
    return ChatNode(process, client, identity.public_key.hex(), task, stop)


async def _reach(src: ChatNode, dst: ChatNode) -> None:
    assert src.process.node is not None and dst.process.node is not None
    for _ in range(60):
        rtt = await src.process.node.ping(str(dst.process.node.address), count=1, timeout=1)
        if rtt[0] is not None:
            return
    raise AssertionError("the nodes never reached each other")


@contextlib.asynccontextmanager
async def chat_nodes(
    root: Path, count: int, *, services: Mapping[str, Mapping[str, Any]] | None = None
) -> AsyncIterator[list[ChatNode]]:
    """``count`` nodes running chat (and the installed ``services``, name → config)."""
    services = services or {}
    plugin = [chat_plugin(), *(p for p in discover_services() if p.name in services)]
    assert len(plugin) == 1 + len(services), f"services missing: {list(services)}"
    configs = {"chat": {}, **services}
    nodes: list[ChatNode] = []
    try:
        first = NodeConfig(data_dir=root / "n0", backend="embedded", listen=("tcp://127.0.0.1:0",))
        nodes.append(await _start(first, plugin, configs))
        assert nodes[0].process.node is not None
        status = await nodes[0].process.node.status()
        uri = status["backend_status"]["listening"][0]
        for i in range(1, count):
            config = NodeConfig(data_dir=root / f"n{i}", backend="embedded", peers=(uri,))
            nodes.append(await _start(config, plugin, configs))
        for src in nodes:
            for dst in nodes:
                if src is not dst:
                    await _reach(src, dst)
        yield nodes
    finally:
        for node in reversed(nodes):
            with contextlib.suppress(Exception):
                await node.client.close()
            node.stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(node.task, 20)


async def eventually(what: str, check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Poll the sync or async ``check`` until it is truthy; fail naming ``what``."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not true after {timeout} s (last {value!r})")
        await asyncio.sleep(0.05)


async def send_signed_by(src: ChatNode, dst: ChatNode, signer: Any, body: str) -> Any:
    """A text envelope from ``src``'s node (the real authenticated source) to ``dst``'s
    chat port, signed by the app key ``signer`` instead of the service: how a node that
    cannot read its own private key signs (pinned on first use), or an impostor would."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from apps.chat.connection import AckReceived, ChatConnection
    from apps.chat.envelope import Envelope, Kind

    assert src.process.node is not None and dst.process.node is not None
    port = int((await dst.call("chat.info"))["port"])
    env = Envelope.build(
        Kind.TEXT,
        sender=bytes.fromhex(src.key),
        signer=signer.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
        recipient=bytes.fromhex(dst.key),
        sent_ms=int(time.time() * 1000),
        body=body.encode(),
        sign=signer.sign,
    )
    conn = ChatConnection()
    reader, writer = await src.process.node.open_connection(str(dst.process.node.address), port)
    try:
        writer.write(conn.send_envelope(bytes(env), env.id))
        await writer.drain()
        while True:
            data = await asyncio.wait_for(reader.read(65536), 15)
            assert data, "the chat port closed without an answer"
            for event in conn.receive_data(data):
                if isinstance(event, AckReceived):
                    return event.ack
    finally:
        writer.close()
