"""Reaching the mesh from any program, and any program from the mesh.

- a SOCKS5 proxy on loopback that dials mesh addresses (:mod:`core.socks`);
- exposed ports: ``LOCALPORT:MESHPORT`` serves ``127.0.0.1:LOCALPORT`` on the node's mesh
  address, to everyone or only to the keys in an allowlist;
- ``connect`` / ``listen`` control-API streams behind ``mesh connect`` / ``mesh listen``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.control.server import ControlServer, reply_line
from core.errors import UsageError
from core.node import Node, parse_target
from core.pipe import pipe_both_ways
from core.socks import SocksProxy, load_or_create_token
from core.tasks import within

__all__ = [
    "Expose",
    "ForwardingConfig",
    "ForwardingService",
    "format_hostport",
    "parse_expose",
    "parse_hostport",
]

log = logging.getLogger(__name__)

SOCKS_USER = "mesh"
LISTEN_TIMEOUT = 3600.0


@dataclass(frozen=True)
class Expose:
    local_port: int
    mesh_port: int


@dataclass(frozen=True)
class ForwardingConfig:
    socks: tuple[str, int] | None = None
    expose: tuple[Expose, ...] = ()
    allow: frozenset[bytes] = field(default_factory=frozenset)  # empty: anyone on the mesh


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise UsageError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:1080 (port 0: any free)")
    host = host.strip("[]") or "127.0.0.1"
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise UsageError(f"{text!r}: local services listen on 127.0.0.1 only")
    return host, int(port)


def format_hostport(host: str, port: int) -> str:
    """``host:port``, with an IPv6 literal in brackets (``[::1]:1080``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_expose(text: str) -> Expose:
    local, sep, mesh = text.partition(":")
    if not sep or not local.isdigit() or not mesh.isdigit():
        raise UsageError(f"{text!r}: expected LOCALPORT:MESHPORT, e.g. 22:22")
    lp, mp = int(local), int(mesh)
    if not (0 < lp < 65536 and 0 < mp < 65536):
        raise UsageError(f"{text!r}: ports are 1..65535")
    return Expose(lp, mp)


class ForwardingService:
    """Owns the SOCKS proxy, the exposed ports and the per-connection pipe tasks."""

    def __init__(self, node: Node, config: ForwardingConfig, data_dir: Path) -> None:
        self.node = node
        self.config = config
        self.data_dir = data_dir
        self._socks: SocksProxy | None = None
        self._socks_bound: tuple[str, int] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        if self.config.socks is not None:
            token = load_or_create_token(self.data_dir / "socks.token")
            self._socks = SocksProxy(self._dial, SOCKS_USER, token)
            self._socks_bound = await self._socks.start(*self.config.socks)
            log.info(
                "SOCKS5 proxy on %s (user %s)", format_hostport(*self._socks_bound), SOCKS_USER
            )
        for ex in self.config.expose:
            await self.node.start_server(self._exposed_handler(ex), ex.mesh_port)
            log.info(
                "exposing 127.0.0.1:%d on [%s]:%d", ex.local_port, self.node.address, ex.mesh_port
            )

    async def close(self) -> None:
        if self._socks is not None:
            await self._socks.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def endpoints(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self._socks_bound:
            out["socks5"] = {
                "listen": format_hostport(*self._socks_bound),
                "username": SOCKS_USER,
                "password_file": str(self.data_dir / "socks.token"),
            }
        if self.config.expose:
            out["exposed"] = [
                f"127.0.0.1:{e.local_port} → mesh port {e.mesh_port}" for e in self.config.expose
            ]
            out["allow"] = sorted(k.hex() for k in self.config.allow) or "any mesh peer"
        return out

    async def _dial(
        self, address: ipaddress.IPv6Address, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await self.node.open_connection(address, port, timeout=20)

    def _allowed(self, writer: asyncio.StreamWriter) -> bool:
        if not self.config.allow:
            return True
        key = writer.get_extra_info("peer_key")
        return key is not None and key in self.config.allow

    def _exposed_handler(self, ex: Expose) -> Any:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._tasks.add(task)
            try:
                peer = writer.get_extra_info("peername")
                if not self._allowed(writer):
                    log.warning(
                        "exposed port %d: refused %s (not in the allowlist)", ex.mesh_port, peer
                    )
                    return
                try:
                    local = await asyncio.open_connection("127.0.0.1", ex.local_port)
                except OSError as exc:
                    log.warning(
                        "exposed port %d: 127.0.0.1:%d: %s", ex.mesh_port, ex.local_port, exc
                    )
                    return
                await pipe_both_ways((reader, writer), local)
            finally:
                self._tasks.discard(task)
                writer.close()

        return handle

    # -- control-API streams ----------------------------------------------------------
    def control_methods(self) -> dict[str, Any]:
        """None plain: its control verbs are streams (see :meth:`register_control`)."""
        return {}

    def register_control(self, control: ControlServer) -> None:
        control.register_stream("connect", self._control_connect)
        control.register_stream("listen", self._control_listen)

    async def _control_connect(
        self,
        rid: Any,
        params: dict[str, Any],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        target = parse_target(str(params.get("target", "")))
        port = _port(params)
        remote = await self.node.open_connection(
            target, port, timeout=float(params.get("timeout", 20))
        )
        peer = remote[1].get_extra_info("peer_key")
        writer.write(
            reply_line(
                rid, {"connected": f"[{target}]:{port}", "peer_key": peer.hex() if peer else None}
            )
        )
        await writer.drain()
        await pipe_both_ways((reader, writer), remote)

    async def _control_listen(
        self,
        rid: Any,
        params: dict[str, Any],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        port = _port(params)
        accepted: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.get_running_loop().create_future()
        )

        async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            if accepted.done():
                w.close()  # netcat-style: one connection
                return
            accepted.set_result((r, w))
            await done.wait()

        done = asyncio.Event()
        server = await self.node.start_server(on_conn, port)
        try:
            writer.write(reply_line(rid, {"listening": f"[{self.node.address}]:{port}"}))
            await writer.drain()
            remote = await within(accepted, LISTEN_TIMEOUT)
            peer = remote[1].get_extra_info("peername")
            log.info("mesh listen %d: connection from %s", port, peer)
            await pipe_both_ways((reader, writer), remote)
        finally:
            done.set()
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()


def _port(params: dict[str, Any]) -> int:
    port = params.get("port")
    if not isinstance(port, int) or not 0 < port < 65536:
        raise UsageError("port must be 1..65535")
    return port
