"""A loopback stand-in for the mesh carrier, kept ONLY for ``tests/bench/bench_mail.py
--path loopback`` (the last user; no test uses it any more: the mail tests run on real
embedded nodes, see ``tests/mail/helpers.py``). Delete this file once that bench path
moves to embedded nodes (``--path embedded`` already measures them).

The carrier presents each connection with the peer's *mesh* address as ``peername``;
the node's own trust boundary (:class:`core.guard.GuardProtocol`) runs on top.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from pathlib import Path
from typing import Any

import pytest

from core.address import address_for_key, subnet_for_key
from core.backend import EventSink, PeerInfo, ProtocolFactory
from core.config import NodeConfig
from core.errors import MeshError
from core.identity import Identity
from core.node import Node

__all__ = ["LoopbackBackend", "LoopbackMesh"]


class _MeshTransport(asyncio.Transport):
    """A loopback transport that reports mesh addresses as peername/sockname."""

    def __init__(self, inner: asyncio.Transport, peer: str, port: int, local: str) -> None:
        super().__init__()
        self._inner = inner
        self._peername = (peer, port, 0, 0)
        self._sockname = (local, inner.get_extra_info("sockname")[1], 0, 0)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peername
        if name == "sockname":
            return self._sockname
        return self._inner.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    def close(self) -> None:
        self._inner.close()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._inner.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._inner.get_protocol()

    def is_reading(self) -> bool:
        return self._inner.is_reading()

    def pause_reading(self) -> None:
        self._inner.pause_reading()

    def resume_reading(self) -> None:
        self._inner.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._inner.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size()

    def write(self, data: Any) -> None:
        self._inner.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self._inner.writelines(list_of_data)

    def write_eof(self) -> None:
        self._inner.write_eof()

    def can_write_eof(self) -> bool:
        return self._inner.can_write_eof()

    def abort(self) -> None:
        self._inner.abort()


class _Shim(asyncio.Protocol):
    """Hands the wrapped transport to the real protocol, then steps aside."""

    def __init__(self, inner: asyncio.BaseProtocol, name_for: Any, local: str) -> None:
        self._inner = inner
        self._name_for = name_for
        self._local = local

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        peer, port = self._name_for(transport)
        wrapped = _MeshTransport(transport, peer, port, self._local)
        transport.set_protocol(self._inner)
        self._inner.connection_made(wrapped)


class _Listener:
    def __init__(
        self, mesh: LoopbackMesh, key: tuple[ipaddress.IPv6Address, int], server: asyncio.Server
    ) -> None:
        self._mesh, self._key, self._server = mesh, key, server

    @property
    def port(self) -> int:
        return self._key[1]

    def close(self) -> None:
        if self._mesh.listeners.get(self._key) == self._server.sockets[0].getsockname()[1]:
            del self._mesh.listeners[self._key]
        self._server.close()

    async def wait_closed(self) -> None:
        await self._server.wait_closed()

    def is_serving(self) -> bool:
        return self._server.is_serving()


class LoopbackMesh:
    """Registry shared by the loopback backends of one test."""

    def __init__(self) -> None:
        self.listeners: dict[tuple[ipaddress.IPv6Address, int], int] = {}
        self.sources: dict[int, ipaddress.IPv6Address] = {}
        self.keys: dict[ipaddress.IPv6Address, bytes] = {}

    async def node(self, data_dir: Path, identity: Identity | None = None) -> Node:
        identity = identity or Identity.generate()
        backend = LoopbackBackend(self, identity.public_key)
        node = Node(NodeConfig(data_dir=data_dir), backend, identity=identity, backend_reason="lo")
        await backend.start(node.events.publish)
        return node


class LoopbackBackend:
    name = "loopback-test"

    def __init__(self, mesh: LoopbackMesh, key: bytes) -> None:
        self.mesh = mesh
        self._key = key
        self._servers: list[asyncio.Server] = []
        mesh.keys[self.address] = key

    @property
    def public_key(self) -> bytes:
        return self._key

    @property
    def address(self) -> ipaddress.IPv6Address:
        return address_for_key(self._key)

    @property
    def subnet(self) -> ipaddress.IPv6Network:
        return subnet_for_key(self._key)

    async def start(self, events: EventSink) -> None:
        return None

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        self._servers.clear()

    def _server_side_name(self, transport: asyncio.Transport) -> tuple[str, int]:
        port = transport.get_extra_info("peername")[1]
        return str(self.mesh.sources.get(port, "127.0.0.1")), port

    async def create_server(
        self, protocol_factory: ProtocolFactory, port: int, *, backlog: int = 100
    ) -> Any:
        loop = asyncio.get_running_loop()
        local = str(self.address)
        server = await loop.create_server(
            lambda: _Shim(protocol_factory(), self._server_side_name, local),
            "127.0.0.1",
            0,
            backlog=backlog,
        )
        self._servers.append(server)
        self.mesh.listeners[(self.address, port)] = server.sockets[0].getsockname()[1]
        return _Listener(self.mesh, (self.address, port), server)

    async def create_connection(
        self,
        protocol_factory: ProtocolFactory,
        address: ipaddress.IPv6Address,
        port: int,
        *,
        timeout: float = 30.0,
    ) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        lport = self.mesh.listeners.get((address, port))
        if lport is None:
            raise ConnectionRefusedError(f"[{address}]:{port}: nothing listens (loopback mesh)")
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        src = sock.getsockname()[1]
        self.mesh.sources[src] = self.address
        try:
            await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", lport)), timeout)
        except BaseException:
            sock.close()
            self.mesh.sources.pop(src, None)
            raise
        inner = protocol_factory()
        transport, _ = await loop.create_connection(
            lambda: _Shim(inner, lambda t: (str(address), port), str(self.address)), sock=sock
        )
        return transport, inner

    async def create_datagram_endpoint(self, *args: Any, **kwargs: Any) -> Any:
        raise MeshError("the loopback test mesh carries streams only")

    async def key_for_address(self, address: ipaddress.IPv6Address) -> bytes | None:
        return self.mesh.keys.get(address)

    async def peers(self) -> list[PeerInfo]:
        return []

    async def add_peer(self, uri: str) -> None:
        raise MeshError("no peers on the loopback test mesh")

    async def remove_peer(self, uri: str) -> None:
        raise MeshError("no peers on the loopback test mesh")

    async def ping(self, *args: Any, **kwargs: Any) -> list[float | None]:
        raise MeshError("no ping on the loopback test mesh")

    async def status(self) -> dict[str, Any]:
        return {"backend": self.name}


# -- the stand-in must present what a real backend presents ---------------------------------


async def test_server_sees_authenticated_mesh_address_and_key(tmp_path: Path) -> None:
    mesh = LoopbackMesh()
    a = await mesh.node(tmp_path / "a")
    b = await mesh.node(tmp_path / "b")
    seen: asyncio.Future[tuple[Any, Any]] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.set_result((writer.get_extra_info("peername"), writer.get_extra_info("peer_key")))
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    try:
        await b.start_server(handle, 2525)
        reader, writer = await a.open_connection(str(b.mail_address), 2525)
        writer.write(b"ping\n")
        assert await asyncio.wait_for(reader.readline(), 5) == b"ping\n"
        peer, key = await asyncio.wait_for(seen, 5)
        assert ipaddress.IPv6Address(peer[0]) == a.address
        assert key == a.key
        assert writer.get_extra_info("peer_key") == b.key
        writer.close()
    finally:
        await a.close()
        await b.close()


async def test_nothing_listening_is_refused(tmp_path: Path) -> None:
    mesh = LoopbackMesh()
    a = await mesh.node(tmp_path / "a")
    other = Identity.generate()
    try:
        with pytest.raises(ConnectionRefusedError):
            await a.open_connection(address_for_key(other.public_key), 2525)
    finally:
        await a.close()
