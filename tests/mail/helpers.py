"""Shared helpers for the mail tests: real embedded nodes in this process, the mail
service on them, smtplib submission and polling.

:class:`EmbeddedMesh` opens real :class:`core.node.Node` objects on the embedded backend
(``backend="embedded"``), every one peered over loopback TCP with one hub node the mesh
owns, so a node that closes never cuts the others off. The whole stack is real: the
Yggdrasil sessions, the user-space IPv6/TCP stack and the node's trust boundary
(:class:`core.guard.GuardProtocol`), which attaches the authenticated ``peer_key``.
"""

from __future__ import annotations

import asyncio
import imaplib
import smtplib
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Self

import pytest

from apps.mail.config import MailConfig
from apps.mail.passwords import set_password
from apps.mail.queue import OutboxQueue
from apps.mail.service import MailService
from apps.mail.store import MailStore
from core.config import NodeConfig
from core.identity import Identity
from core.node import Node

__all__ = [
    "PASSWORD",
    "EmbeddedMesh",
    "MailNode",
    "on_shared_mesh",
    "reachable",
    "smtp_send",
    "wait_for",
]

PASSWORD = "correct horse battery"

#: Mark for a test on the shared mesh (``mesh``/``mesh_nodes`` in conftest.py): it runs
#: in the session's event loop, where those nodes live. Its async fixtures need
#: ``@pytest_asyncio.fixture(loop_scope="session")`` too.
on_shared_mesh = pytest.mark.asyncio(loop_scope="session")
LOOPBACK_LISTEN = "tcp://127.0.0.1:0"


async def wait_for(what: str, probe: Any, timeout: float = 20.0) -> Any:
    """Poll an async ``probe`` until it returns something true, or fail saying ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        # Bounded too: a probe that hangs is a failure with a name, not a silent stall.
        last = await asyncio.wait_for(probe(), max(deadline - time.monotonic(), 0.1))
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last {last!r})")


async def reachable(src: Node, dst: Node, attempts: int = 60) -> None:
    """Ping until ``dst`` answers ``src``: like yggdrasil, the first packets to a new
    destination can be lost while the path lookup runs."""
    for _ in range(attempts):
        if (await src.ping(str(dst.address), count=1, timeout=1))[0] is not None:
            return
    raise AssertionError(f"{dst.address} unreachable from {src.address}")


@dataclass
class EmbeddedMesh:
    """Embedded nodes in this process, each peered with a hub node over loopback TCP.

    Use as ``async with EmbeddedMesh(tmp_path / "mesh") as mesh``; closing it closes
    every node it opened that is still open, then the hub.
    """

    root: Path
    _hub: Node | None = None
    _hub_uri: str = ""
    _serial: int = 0
    _nodes: list[Node] = field(default_factory=list)
    _hub_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def __aenter__(self) -> EmbeddedMesh:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def hub(self) -> Node:
        async with self._hub_lock:  # concurrent callers must share one hub
            return await self._open_hub()

    async def _open_hub(self) -> Node:
        if self._hub is None:
            config = NodeConfig(
                data_dir=self.root / "hub", backend="embedded", listen=(LOOPBACK_LISTEN,)
            )
            self._hub = await Node.open(config, Identity.generate())
            self._hub_uri = (await self._hub.status())["backend_status"]["listening"][0]
        return self._hub

    async def node(
        self, data_dir: Path, identity: Identity | None = None, *, wait: bool = True
    ) -> Node:
        """A new embedded node peered with the hub; with ``wait``, returned once the mesh
        routes to it (a few seconds: the tree and path lookups settle)."""
        hub = await self.hub()
        config = NodeConfig(data_dir=data_dir, backend="embedded", peers=(self._hub_uri,))
        node = await Node.open(config, identity or Identity.generate())
        self._nodes.append(node)
        if wait:
            await reachable(node, hub)
            await reachable(hub, node)
        return node

    async def nodes(self, count: int) -> list[Node]:
        """``count`` new nodes, each reachable from the others: opened one after the
        other, then waited for together (about one wait for all)."""
        self._serial += 1
        base = self.root / f"set{self._serial}"
        hub = await self.hub()
        nodes = [await self.node(base / f"n{i}", wait=False) for i in range(count)]
        for node in nodes:
            await reachable(node, hub)
            await reachable(hub, node)
        for src in nodes:
            for dst in nodes:
                if src is not dst:
                    await reachable(src, dst)
        return nodes

    async def close(self) -> None:
        for node in self._nodes:
            await node.close()
        self._nodes.clear()
        if self._hub is not None:
            await self._hub.close()
            self._hub = None


def _mail_config(config: dict[str, Any]) -> MailConfig:
    return MailConfig.from_mapping({"smtp": "127.0.0.1:0", "imap": "127.0.0.1:0", **config})


@dataclass
class MailNode:
    """A node with the mail service running on it (submission/IMAP on free loopback
    ports); closing it closes the node too when it owns it."""

    node: Node
    service: MailService
    data_dir: Path
    owns_node: bool = True

    @classmethod
    async def start(
        cls,
        mesh: EmbeddedMesh,
        data_dir: Path,
        identity: Identity | None = None,
        *,
        wait: bool = True,
        **config: Any,
    ) -> Self:
        """A new node of ``mesh`` (see :meth:`EmbeddedMesh.node`) with the service on it."""
        node = await mesh.node(data_dir, identity, wait=wait)
        return await cls.adopt(node, data_dir, **config)

    @classmethod
    async def adopt(cls, node: Node, data_dir: Path, **config: Any) -> Self:
        """The mail service on ``node``, which the result then owns (closes); the node is
        closed here if the service does not start."""
        try:
            served = await cls.serve(node, data_dir, **config)
        except BaseException:
            await node.close()
            raise
        served.owns_node = True
        return served

    @classmethod
    async def serve(cls, node: Node, data_dir: Path, **config: Any) -> Self:
        """The mail service on a node someone else owns (closing stops only the service)."""
        data_dir.mkdir(parents=True, exist_ok=True)
        if not (data_dir / "mail-password.json").exists():
            set_password(data_dir, PASSWORD)
        service = MailService(node, _mail_config(config), data_dir)
        await service.start()
        return cls(node, service, data_dir, owns_node=False)

    async def restart_service(self, **config: Any) -> None:
        """Stop the mail service and start a new one on the same node and data dir."""
        await self.service.close()
        self.service = MailService(self.node, _mail_config(config), self.data_dir)
        await self.service.start()

    @property
    def address(self) -> str:
        return str(self.node.mail_address)

    @property
    def store(self) -> MailStore:
        assert self.service.store is not None
        return self.service.store

    @property
    def queue(self) -> OutboxQueue:
        assert self.service.queue is not None
        return self.service.queue

    async def close(self) -> None:
        await self.service.close()
        if self.owns_node:
            await self.node.close()


def _smtp_send_sync(
    port: int, user: str, password: str, msg: bytes | EmailMessage, from_addr: str, to: list[str]
) -> dict[str, Any]:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="localhost", timeout=30) as smtp:
        smtp.login(user, password)
        if isinstance(msg, EmailMessage):
            return smtp.send_message(msg, from_addr=from_addr, to_addrs=to)
        return smtp.sendmail(from_addr, to, msg)


async def smtp_send(
    sender: MailNode,
    msg: bytes | EmailMessage,
    to: list[str],
    *,
    password: str = PASSWORD,
    from_addr: str | None = None,
) -> dict[str, Any]:
    """smtplib (in a thread: it blocks) through the sender's submission port."""
    assert sender.service.submission_port is not None
    return await asyncio.to_thread(
        _smtp_send_sync,
        sender.service.submission_port,
        sender.address,
        password,
        msg,
        from_addr or sender.address,
        to,
    )


def imap_fetch_all(port: int, user: str, password: str, mailbox: str = "INBOX") -> list[bytes]:
    """Every message in ``mailbox`` over IMAP (imaplib, blocking), oldest first."""
    imap = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    try:
        imap.login(user, password)
        typ, _ = imap.select(mailbox, readonly=True)
        assert typ == "OK"
        typ, data = imap.uid("SEARCH", "ALL")
        uids = data[0].split() if data and data[0] else []
        out = []
        for uid in uids:
            typ, parts = imap.uid("FETCH", uid, "(BODY.PEEK[])")
            assert typ == "OK"
            out.append(next(p[1] for p in parts if isinstance(p, tuple)))
        return out
    finally:
        imap.logout()
