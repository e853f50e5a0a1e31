"""The node: one object every app uses, whatever backend carries the packets.

    async with await Node.open(config) as node:
        server = await node.start_server(handle, 2525)
        reader, writer = await node.open_connection(peer_address, 2525)

Networking mirrors asyncio. On every connection ``get_extra_info("peername")`` is
the peer's authenticated mesh address and ``get_extra_info("peer_key")`` its key
(or None where the backend cannot tell); peers outside ``200::/7`` are refused.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from core.address import address_for_key, is_mesh_address, subnet_for_key
from core.backend import (
    Backend,
    DatagramFactory,
    MeshServer,
    NodeEvent,
    PeerInfo,
    ProtocolFactory,
)
from core.config import NodeConfig
from core.contacts import CONTACTS_FILE_NAME, Contacts
from core.errors import MeshError, UsageError
from core.events import EventBus
from core.guard import GuardProtocol
from core.identity import Identity
from core.mailaddr import MailAddress, parse_mail_address
from core.types import NO_KEY_DATAGRAMS, KeyDatagramPort

if TYPE_CHECKING:
    from core.keyquic import KeyQuicConfig, KeyQuicEndpoint, StreamFactory

if TYPE_CHECKING:
    from core.relay.service import RelayService

__all__ = ["Node", "parse_target"]

log = logging.getLogger(__name__)

StreamCallback = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None]
STREAM_LIMIT = 64 * 1024


def parse_target(text: str) -> ipaddress.IPv6Address:
    """A mesh address from ``ADDRESS``, a 64-hex key, or ``KEY@mesh``."""
    value = text.strip().strip("[]")
    if "@" in value:
        return parse_mail_address(value).node_address
    if len(value) == 64:
        try:
            return address_for_key(bytes.fromhex(value))
        except ValueError:
            raise UsageError(f"{text!r} is not a hex key") from None
    try:
        addr = ipaddress.IPv6Address(value.split("%", 1)[0])
    except ValueError:
        raise UsageError(f"{text!r} is not a mesh address, key or key@mesh") from None
    if not is_mesh_address(addr):
        raise UsageError(f"{addr} is not a mesh address (200::/7)")
    return addr


@functools.lru_cache(maxsize=1024)
def _is_mesh_text(host: str) -> bool:
    """:func:`is_mesh_address` of a sender's text address, once per address, not per
    datagram."""
    return is_mesh_address(host)


class _DatagramGuard(asyncio.DatagramProtocol):
    """Drops datagrams from outside 200::/7 before the app sees them."""

    def __init__(self, inner: asyncio.DatagramProtocol) -> None:
        self.inner = inner
        self.refused = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Python 3.11's selector UDP transport does not derive from DatagramTransport.
        self.inner.connection_made(cast(asyncio.DatagramTransport, transport))

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if not _is_mesh_text(str(addr[0])):
            self.refused += 1
            log.debug("dropped a datagram from non-mesh %s", addr)
            return
        self.inner.datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.inner.error_received(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)


class _TrackedServer:
    """A server the node closes on shutdown; closing it early drops it from the node."""

    def __init__(self, inner: MeshServer, forget: Callable[[MeshServer], None]) -> None:
        self._inner = inner
        self._forget = forget

    @property
    def port(self) -> int:
        return self._inner.port

    def close(self) -> None:
        self._forget(self)
        self._inner.close()

    async def wait_closed(self) -> None:
        await self._inner.wait_closed()

    def is_serving(self) -> bool:
        return self._inner.is_serving()


class Node:
    """A running node. Create with :meth:`open`; close with :meth:`close` or ``async with``."""

    def __init__(
        self,
        config: NodeConfig,
        backend: Backend,
        *,
        identity: Identity | None,
        backend_reason: str,
    ) -> None:
        self.config = config
        self.backend = backend
        self.identity = identity
        self.backend_reason = backend_reason
        self.events = EventBus()
        self.contacts: Contacts  # opened by open(), closed by close()
        # the node process's relay service (core.relay), set before the apps start;
        # None where none runs (an app then delivers directly only)
        self.relay: RelayService | None = None
        self._servers: set[MeshServer] = set()
        self._key_quic: KeyQuicEndpoint | None = None
        self._closed = False

    @classmethod
    async def open(
        cls,
        config: NodeConfig,
        identity: Identity | None = None,
        *,
        backend: Backend | None = None,
    ) -> Node:
        """Choose and start a backend (see :mod:`core.backends`) and return the node.

        ``backend``: a backend built by the caller (not started), e.g. the in-memory
        mesh of :mod:`core.testing`; otherwise ``config`` chooses one."""
        from core.backends import select_backend

        if backend is None:
            backend, reason = await select_backend(config, identity)
        else:
            reason = f"{backend.name} given by the caller"
        node = cls(config, backend, identity=identity, backend_reason=reason)
        node.contacts = await Contacts.open(
            config.data_dir / CONTACTS_FILE_NAME, events=node.events.publish
        )
        try:
            await backend.start(node.events.publish)
        except BaseException:
            await node.contacts.close()
            raise
        node.contacts.own_key = backend.public_key  # a node is not its own contact
        if identity is not None and backend.public_key != identity.public_key:
            log.warning(
                "the daemon's key differs from this node's identity: the mail address is "
                "the daemon's key (%s); see docs/yggdrasil.md",
                backend.public_key.hex(),
            )
            node.identity = None
        log.info("node up: %s on %s (%s)", node.address, backend.name, reason)
        return node

    async def __aenter__(self) -> Node:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._key_quic is not None:
            self._key_quic.close()
        servers = list(self._servers)
        for server in servers:
            server.close()
        for server in servers:
            await server.wait_closed()
        self._servers.clear()
        try:
            await self.backend.close()
        finally:
            await self.contacts.close()
            self.events.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` started."""
        return self._closed

    # -- identity -------------------------------------------------------------------
    @property
    def key(self) -> bytes:
        return self.backend.public_key

    @property
    def address(self) -> ipaddress.IPv6Address:
        return address_for_key(self.key)

    @property
    def subnet(self) -> ipaddress.IPv6Network:
        return subnet_for_key(self.key)

    @property
    def mail_address(self) -> MailAddress:
        return MailAddress(self.key)

    # -- networking -----------------------------------------------------------------
    async def key_for_address(self, address: ipaddress.IPv6Address | str) -> bytes | None:
        """The full key of the node at ``address`` (a connection's or datagram's
        source), or None if no session with it was seen."""
        addr = ipaddress.IPv6Address(str(address).split("%", 1)[0])
        if addr == self.address:
            return self.key
        return await self.backend.key_for_address(addr)

    async def create_server(
        self, protocol_factory: ProtocolFactory, port: int, *, backlog: int = 100
    ) -> MeshServer:
        """Serve ``protocol_factory`` on ``[node address]:port``, mesh peers only."""
        service = f"port {port}"

        def guarded() -> asyncio.BaseProtocol:
            return GuardProtocol(protocol_factory, self.key_for_address, service)

        server = await self.backend.create_server(guarded, port, backlog=backlog)
        tracked = _TrackedServer(server, self._servers.discard)
        self._servers.add(tracked)
        return tracked

    async def create_connection(
        self,
        protocol_factory: ProtocolFactory,
        address: ipaddress.IPv6Address | str,
        port: int,
        *,
        timeout: float = 30.0,
    ) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        """Connect to ``[address]:port`` on the mesh (address, key or key@mesh)."""
        target = parse_target(str(address))
        guards: list[GuardProtocol] = []

        def guarded() -> asyncio.BaseProtocol:
            guard = GuardProtocol(protocol_factory, self.key_for_address, f"to [{target}]:{port}")
            guards.append(guard)
            return guard

        await self.backend.create_connection(guarded, target, port, timeout=timeout)
        return await guards[0].admitted

    async def start_server(
        self, client_connected_cb: StreamCallback, port: int, *, limit: int = STREAM_LIMIT
    ) -> MeshServer:
        loop = asyncio.get_running_loop()

        def factory() -> asyncio.BaseProtocol:
            reader = asyncio.StreamReader(limit=limit, loop=loop)
            return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)

        return await self.create_server(factory, port)

    async def open_connection(
        self,
        address: ipaddress.IPv6Address | str,
        port: int,
        *,
        limit: int = STREAM_LIMIT,
        timeout: float = 30.0,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        transport, protocol = await self.create_connection(
            lambda: asyncio.StreamReaderProtocol(reader, loop=loop),
            address,
            port,
            timeout=timeout,
        )
        assert isinstance(protocol, asyncio.StreamReaderProtocol)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        return reader, writer

    async def create_datagram_endpoint(
        self,
        protocol_factory: DatagramFactory,
        *,
        local_port: int = 0,
        remote: tuple[ipaddress.IPv6Address | str, int] | None = None,
    ) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]:
        """A UDP endpoint on the node's mesh address; non-mesh senders are dropped.

        ``datagram_received(data, addr)``: ``addr[0]`` is the sender's mesh address,
        authenticated by the backend on both (embedded: the session's key owns it;
        daemon: the TUN only delivers what a session carried), and
        ``await node.key_for_address(addr[0])`` gives the sender's full key."""
        target = (parse_target(str(remote[0])), remote[1]) if remote else None
        transport, guard = await self.backend.create_datagram_endpoint(
            lambda: _DatagramGuard(protocol_factory()), local_port=local_port, remote=target
        )
        assert isinstance(guard, _DatagramGuard)
        return transport, guard.inner

    # -- key-addressed datagrams and QUIC over them (Yggmail's transport) -------------
    @property
    def key_datagrams_supported(self) -> bool:
        """Whether the backend carries raw session traffic (embedded: yes; daemon: no)."""
        return callable(getattr(self.backend, "key_datagrams", None))

    def key_datagrams(self) -> KeyDatagramPort:
        """Datagrams by Ed25519 key that are not IPv6; :class:`MeshError` on a TUN backend."""
        port_of = getattr(self.backend, "key_datagrams", None)
        if not callable(port_of):
            raise MeshError(NO_KEY_DATAGRAMS)
        port = port_of()
        assert isinstance(port, KeyDatagramPort)
        return port

    async def open_key_quic(
        self, stream_factory: StreamFactory, config: KeyQuicConfig | None = None
    ) -> KeyQuicEndpoint:
        """The node's yggquic-compatible QUIC endpoint (one per node; closed with the node).

        ``stream_factory(peer_key)`` makes the protocol for each stream a peer opens; the
        transport's ``get_extra_info("peer_key")`` is that peer's authenticated key. The
        endpoint's certificate is made from the node's key, so it needs the node's own
        identity (not a daemon's key) and a backend with :meth:`key_datagrams`.
        """
        from core.keyquic import KeyQuicEndpoint

        port = self.key_datagrams()
        if self.identity is None:
            raise MeshError("QUIC by key needs the node's own identity (not a daemon's key)")
        if self._key_quic is not None:
            raise MeshError("the node's QUIC endpoint is already open")
        endpoint = KeyQuicEndpoint(
            seed=self.identity.seed,
            public_key=self.key,
            send=port.send_datagram,
            mtu=port.datagram_mtu,
            stream_factory=stream_factory,
            config=config,
            on_close=lambda: self._key_quic_closed(port),
        )
        port.set_datagram_handler(endpoint.datagram_received)
        self._key_quic = endpoint
        return endpoint

    def _key_quic_closed(self, port: KeyDatagramPort) -> None:
        port.set_datagram_handler(None)
        self._key_quic = None

    # -- peers and status -------------------------------------------------------------
    async def peers(self) -> list[PeerInfo]:
        return await self.backend.peers()

    async def add_peer(self, uri: str) -> None:
        await self.backend.add_peer(uri)
        self.events.publish(NodeEvent("peer.added", {"uri": uri}))

    async def remove_peer(self, uri: str) -> None:
        await self.backend.remove_peer(uri)
        self.events.publish(NodeEvent("peer.removed", {"uri": uri}))

    async def ping(
        self,
        target: ipaddress.IPv6Address | str,
        *,
        count: int = 4,
        interval: float = 1.0,
        timeout: float = 5.0,
    ) -> list[float | None]:
        if count < 1 or interval < 0 or timeout <= 0:
            raise UsageError("ping: count ≥ 1, interval ≥ 0 and timeout > 0")
        return await self.backend.ping(
            parse_target(str(target)), count=count, interval=interval, timeout=timeout
        )

    async def status(self) -> dict[str, Any]:
        try:
            backend_status = await self.backend.status()
        except MeshError as exc:
            backend_status = {"error": str(exc)}
        return {
            "key": self.key.hex(),
            "address": str(self.address),
            "subnet": str(self.subnet),
            "mail_address": str(self.mail_address),
            "identity": "own" if self.identity is not None else "daemon's key",
            "backend": self.backend.name,
            "backend_reason": self.backend_reason,
            "data_dir": str(self.config.data_dir),
            "peers": [p.to_json() for p in await self.peers()],
            "backend_status": backend_status,
            # Raw session traffic by key (Yggmail's transport): a reason when it is missing.
            "key_datagrams": "available" if self.key_datagrams_supported else NO_KEY_DATAGRAMS,
            "key_quic": None if self._key_quic is None else self._key_quic.status(),
        }
