"""The yggdrasil backend: kernel IPv6 sockets on the daemon's TUN, facts from its admin socket.

*attach*: a daemon already runs; ``config.admin_endpoint`` (unset: upstream's and then
Debian's default socket, :data:`DEFAULT_ENDPOINTS`) reaches it; the node key and address
are the daemon's.
*managed* (``config.managed``): :class:`~.daemon.ManagedDaemon` runs one from the suite's
identity, with its admin socket in the data dir.

Every socket is bound to the node's mesh address and, unless ``bind_to_device = false``,
to the TUN interface with ``SO_BINDTODEVICE``. Linux accepts a packet for a local
address on any interface, so without the device binding a neighbour on the LAN could
send packets with a forged ``200::/7`` source straight to the mesh address over
Ethernet; bound to the TUN, a socket only sees what the daemon delivered, and the
daemon only delivers from the address its session key owns. Binding records the
interface index, so after the daemon restarts (new TUN) listening sockets are rebound.

Options in ``mesh.toml`` (table ``[yggdrasil]``): ``netns`` (run the node's sockets in
that network namespace), ``poll_interval`` (s, peers polling), ``bind_to_device``,
``session_ttl`` (s, address→key cache), ``start_timeout`` (s, managed daemon).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from core.address import subnet_for_key
from core.backend import (
    DatagramFactory,
    EventSink,
    MeshServer,
    NodeEvent,
    PeerInfo,
    ProtocolFactory,
)
from core.config import DEFAULT_ADMIN_ENDPOINT, NodeConfig
from core.errors import MeshError, UsageError
from core.identity import KEY_FILE_NAME, Identity
from core.tasks import cancel_and_wait, within

from . import ping as icmp
from .admin import AdminClient, DaemonUnreachableError, SelfInfo
from .daemon import ManagedDaemon
from .daemonconf import DaemonSettings
from .netns import InterfaceAddress, NetNamespace
from .udp import DatagramAdapter

__all__ = ["DEFAULT_ENDPOINTS", "YggdrasilBackend", "find_default_endpoint", "probe_daemon"]

log = logging.getLogger(__name__)

SESSION_CACHE_SIZE = 4096
DEFAULT_SESSION_TTL = 600.0
DEFAULT_POLL_INTERVAL = 2.0


# Upstream's Linux default AdminListen, then the one Debian's build (0.4.7 and 0.5.12)
# compiles in and its systemd unit can write (RuntimeDirectory=yggdrasil).
DEFAULT_ENDPOINTS = (DEFAULT_ADMIN_ENDPOINT, "unix:///var/run/yggdrasil/yggdrasil.sock")


async def find_default_endpoint(timeout: float = 2.0) -> str | None:
    """The first of :data:`DEFAULT_ENDPOINTS` where a daemon answers."""
    for endpoint in DEFAULT_ENDPOINTS:
        if await _probe(endpoint, timeout):
            return endpoint
    return None


def endpoints_to_try(endpoint: str) -> tuple[str, ...]:
    """Every admin endpoint a probe of ``endpoint`` tries, in order (the default one
    stands for all of :data:`DEFAULT_ENDPOINTS`, Debian's included)."""
    return DEFAULT_ENDPOINTS if endpoint == DEFAULT_ADMIN_ENDPOINT else (endpoint,)


async def find_daemon(endpoint: str, timeout: float = 2.0) -> str | None:
    """The endpoint of :func:`endpoints_to_try` where a daemon answers ``getSelf``."""
    for candidate in endpoints_to_try(endpoint):
        if await _probe(candidate, timeout):
            return candidate
    return None


async def probe_daemon(endpoint: str, timeout: float = 2.0) -> bool:
    """Whether a yggdrasil daemon answers ``getSelf`` at ``endpoint`` (for the
    default endpoint, also at Debian's default)."""
    return await find_daemon(endpoint, timeout) is not None


async def _probe(endpoint: str, timeout: float) -> bool:
    try:
        client = AdminClient(endpoint, timeout=timeout)
    except MeshError:
        return False
    try:
        await client.get_self()
    except MeshError as exc:
        log.debug("no daemon at %s: %s", endpoint, exc)
        return False
    finally:
        await client.close()
    return True


def _positive(opts: Mapping[str, Any], key: str, default: float) -> float:
    value = opts.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise UsageError(f"[yggdrasil] {key} must be a positive number of seconds, got {value!r}")
    return float(value)


def _netns_path(value: Any) -> str | None:
    if not value:
        return None
    text = str(value)
    return text if "/" in text else f"/var/run/netns/{text}"


class NotStartedError(MeshError, AttributeError):
    """Key and address are unknown before ``start``; an AttributeError too, so
    ``hasattr`` and runtime Protocol checks answer instead of raising."""


class _Server:
    """A listening socket on [node address]:port, rebound when the TUN is recreated."""

    def __init__(
        self, backend: YggdrasilBackend, factory: ProtocolFactory, port: int, backlog: int
    ) -> None:
        self._backend = backend
        self._factory = factory
        self._port = port
        self._backlog = backlog
        self._server: asyncio.Server | None = None
        self._ifindex: int | None = None  # the TUN the socket is bound to
        self._closed = False

    @property
    def port(self) -> int:
        return self._port

    async def bind(self) -> None:
        sock = self._backend._socket(socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((str(self._backend.address), self._port))
        except OSError as exc:
            sock.close()
            raise MeshError(
                f"cannot listen on [{self._backend.address}]:{self._port}: {exc.strerror}"
            ) from None
        self._port = sock.getsockname()[1]
        self._ifindex = self._backend._tun.ifindex if self._backend._tun else None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._factory, sock=sock, backlog=self._backlog)

    async def rebind(self, ifindex: int) -> None:
        """Listen again if the TUN the socket is bound to is not ``ifindex`` any more."""
        if self._closed or ifindex == self._ifindex:
            return
        old, self._server = self._server, None
        if old is not None:
            old.close()
            await old.wait_closed()
        log.info("rebinding port %d to the new TUN (index %d)", self._port, ifindex)
        try:
            await self.bind()
        except MeshError as exc:
            log.error("service on port %d could not be rebound: %s", self._port, exc)

    def close(self) -> None:
        self._closed = True
        self._backend._servers.discard(self)
        if self._server is not None:
            self._server.close()

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()

    def is_serving(self) -> bool:
        return self._server is not None and self._server.is_serving()


class YggdrasilBackend:
    """:class:`core.backend.Backend` over a real yggdrasil daemon (attach or managed)."""

    name = "yggdrasil"

    def __init__(self, config: NodeConfig, identity: Identity | None) -> None:
        opts = config.service("yggdrasil")
        self.config = config
        self.identity = identity
        self.managed = config.managed
        if self.managed:
            endpoint = f"unix://{ManagedDaemon.admin_socket(config.data_dir)}"
        else:
            endpoint = config.admin_endpoint or DEFAULT_ADMIN_ENDPOINT
        self._default_endpoint = not self.managed and config.admin_endpoint is None
        self.admin = AdminClient(endpoint)
        self.netns = NetNamespace(_netns_path(opts.get("netns")))
        self.poll_interval = _positive(opts, "poll_interval", DEFAULT_POLL_INTERVAL)
        self.bind_to_device = bool(opts.get("bind_to_device", True))
        self.session_ttl = _positive(opts, "session_ttl", DEFAULT_SESSION_TTL)
        self.start_timeout = _positive(opts, "start_timeout", 30.0)
        self.daemon: ManagedDaemon | None = None
        self._self: SelfInfo | None = None
        self._tun: InterfaceAddress | None = None
        self._servers: set[_Server] = set()
        self._keys: OrderedDict[ipaddress.IPv6Address, tuple[bytes, float]] = OrderedDict()
        self._refresh: tuple[float, asyncio.Future[None]] | None = None  # (started, done)
        self._peer_state: dict[tuple[str, str], bool] = {}
        self._session_keys: set[bytes] = set()  # for session.up events
        self._events: EventSink = lambda _event: None
        self._poller: asyncio.Task[None] | None = None
        self._tun_lock = asyncio.Lock()
        self._warned_device = False

    # -- identity --------------------------------------------------------------------
    def _info(self) -> SelfInfo:
        if self._self is None:
            raise NotStartedError("the yggdrasil backend is not started")
        return self._self

    @property
    def public_key(self) -> bytes:
        return self._info().key

    @property
    def address(self) -> ipaddress.IPv6Address:
        return self._info().address

    @property
    def subnet(self) -> ipaddress.IPv6Network:
        return subnet_for_key(self.public_key)

    @property
    def tun_name(self) -> str | None:
        return self._tun.ifname if self._tun else None

    # -- lifecycle -------------------------------------------------------------------
    async def start(self, events: EventSink) -> None:
        self._events = events
        try:
            if self.managed:
                await self._start_managed()
            else:
                if self._default_endpoint:
                    found = await find_default_endpoint()
                    if found is None:
                        raise DaemonUnreachableError(
                            f"no yggdrasil daemon answers at {' or '.join(DEFAULT_ENDPOINTS)}; "
                            "start it (systemctl start yggdrasil), set [node] admin / --admin "
                            "to its AdminListen, or use --managed"
                        )
                    if found != str(self.admin):
                        await self.admin.close()
                        self.admin = AdminClient(found)
                self._self = await self.admin.get_self()
                self._tun = self.netns.find(self._self.address)
                if self._tun is None:
                    log.warning(
                        "the daemon's address %s is on no interface in %s (IfName none, or "
                        "another namespace); mesh sockets will not work",
                        self._self.address,
                        self.netns,
                    )
            for peer in await self.admin.get_peers():
                self._peer_state[(peer.uri, peer.key.hex() if peer.key else "")] = peer.up
        except BaseException:
            await self.close()
            raise
        self._poller = asyncio.get_running_loop().create_task(self._poll(), name="ygg-poll")
        log.info(
            "yggdrasil %s (%s) at %s: %s on %s",
            self._self.build_version if self._self else "?",
            "managed" if self.managed else "attached",
            self.admin,
            self.address,
            self.tun_name or "no TUN",
        )

    async def _start_managed(self) -> None:
        if self.identity is None:
            raise MeshError("a managed daemon runs with this node's key; run `mesh init` first")
        cfg = self.config
        settings = DaemonSettings(
            listen=cfg.listen,
            peers=cfg.peers,
            multicast_interfaces=cfg.multicast_interfaces,
            admin_listen="",  # the daemon object decides (socket in the data dir)
            if_name=cfg.if_name,
            key_path=cfg.data_dir / KEY_FILE_NAME,
        )
        self.daemon = ManagedDaemon(
            binary=cfg.yggdrasil_binary,
            data_dir=cfg.data_dir,
            identity=self.identity,
            settings=settings,
            events=self._events,
            netns_path=self.netns.path,
            start_timeout=self.start_timeout,
        )
        await self.daemon.claim()
        if await probe_daemon(str(self.admin), timeout=1.0):
            raise MeshError(
                f"a yggdrasil daemon that this data dir did not start answers at {self.admin}; "
                "stop it, or use another --data-dir"
            )
        await self.daemon.start(self._managed_ready, self._sync_tun)

    async def _managed_ready(self) -> bool:
        try:
            info = await self.admin.get_self()
        except DaemonUnreachableError:
            return False
        assert self.identity is not None
        if info.key != self.identity.public_key:
            raise MeshError(
                f"the daemon at {self.admin} runs with key {info.key.hex()}, not this node's; "
                "another yggdrasil is using the managed admin socket"
            )
        self._self = info
        if self.config.if_name == "none":
            return True
        tun = self.netns.find(info.address)
        if tun is None or not tun.usable:
            return False
        self._tun = tun
        return True

    async def close(self) -> None:
        if self._poller is not None:
            await cancel_and_wait(self._poller, what="the yggdrasil peers poller")
            self._poller = None
        for server in list(self._servers):
            server.close()
        if self.daemon is not None:
            await self.daemon.stop()
        await self.admin.close()
        self.netns.close()

    # -- polling: peer events and daemon restarts --------------------------------------
    async def _poll(self) -> None:
        reachable = True
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                peers = await self.admin.get_peers()
            except DaemonUnreachableError as exc:
                if reachable:
                    log.warning("%s", exc)
                    self._events(NodeEvent("daemon.unreachable", {"error": str(exc)}))
                    reachable = False
                continue
            except MeshError as exc:
                log.warning("polling peers: %s", exc)
                continue
            if not reachable:
                reachable = True
                await self._sync_tun()
                self._events(NodeEvent("daemon.reachable", {"admin": str(self.admin)}))
            self._diff_peers(peers)
            await self._diff_sessions()

    def _diff_peers(self, peers: list[PeerInfo]) -> None:
        now: dict[tuple[str, str], PeerInfo] = {
            (p.uri, p.key.hex() if p.key else ""): p for p in peers
        }
        for ident, peer in now.items():
            if self._peer_state.get(ident, False) != peer.up:
                self._events(NodeEvent("peer.up" if peer.up else "peer.down", peer.to_json()))
        for ident in self._peer_state.keys() - now.keys():
            if self._peer_state[ident]:
                self._events(NodeEvent("peer.down", {"uri": ident[0], "key": ident[1] or None}))
        self._peer_state = {ident: p.up for ident, p in now.items()}

    async def _diff_sessions(self) -> None:
        """``session.up`` for each node the daemon opened a session with since the last poll."""
        try:
            sessions = await self.admin.get_sessions()
        except MeshError as exc:
            log.debug("polling sessions: %s", exc)
            return
        now = {s.key for s in sessions}
        for key in now - self._session_keys:
            self._events(NodeEvent("session.up", {"key": key.hex()}))
        self._session_keys = now

    async def _sync_tun(self) -> None:
        """After a daemon restart: check the key, find the (new) TUN, rebind services."""
        async with self._tun_lock:
            try:
                info = await self.admin.get_self()
            except MeshError as exc:
                log.warning("after a daemon restart: %s", exc)
                return
            if self._self is not None and info.key != self._self.key:
                log.error(
                    "the daemon came back with another key (%s); this node's address is "
                    "stale: restart the node",
                    info.key.hex(),
                )
                self._events(NodeEvent("daemon.key_changed", {"key": info.key.hex()}))
                return
            self._self = info
            tun = self.netns.find(info.address)
            if tun is None:
                return
            self._tun = tun
            for server in list(self._servers):
                await server.rebind(tun.ifindex)

    # -- sockets -----------------------------------------------------------------------
    def _require_tun(self) -> InterfaceAddress:
        if self._tun is None:
            raise MeshError(
                f"the daemon at {self.admin} has no TUN interface for {self.address} in "
                f'{self.netns}; set IfName in its config (not "none") so apps can use '
                "the mesh, or run the node in the daemon's network namespace"
            )
        return self._tun

    def _socket(self, kind: int, proto: int = 0) -> socket.socket:
        # Stream sockets are made with proto=IPPROTO_TCP: asyncio then turns Nagle off
        # on them and on every socket they accept (as it does for its own sockets), so
        # dialogue protocols (SMTP, IMAP, chat, signaling) do not wait for delayed ACKs.
        self._require_tun()
        sock = self.netns.socket(socket.AF_INET6, kind, proto)
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if self.bind_to_device:
                self._bind_device(sock)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _bind_device(self, sock: socket.socket) -> None:
        assert self._tun is not None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self._tun.ifname.encode())
        except PermissionError:
            if not self._warned_device:
                log.warning(
                    "SO_BINDTODEVICE to %s is not permitted; mesh sockets accept packets to "
                    "the mesh address from any interface (see docs/yggdrasil.md, firewall)",
                    self._tun.ifname,
                )
                self._warned_device = True

    async def create_server(
        self, protocol_factory: ProtocolFactory, port: int, *, backlog: int = 100
    ) -> MeshServer:
        server = _Server(self, protocol_factory, port, backlog)
        await server.bind()
        self._servers.add(server)
        return server

    async def create_connection(
        self,
        protocol_factory: ProtocolFactory,
        address: ipaddress.IPv6Address,
        port: int,
        *,
        timeout: float = 30.0,
    ) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        loop = asyncio.get_running_loop()
        sock = self._socket(socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.bind((str(self.address), 0))
            try:
                await within(loop.sock_connect(sock, (str(address), port)), timeout)
            except TimeoutError:
                raise TimeoutError(
                    f"no answer from [{address}]:{port} within {timeout:g} s over the mesh"
                ) from None
            return await loop.create_connection(protocol_factory, sock=sock)
        except BaseException:
            sock.close()
            raise

    async def create_datagram_endpoint(
        self,
        protocol_factory: DatagramFactory,
        *,
        local_port: int = 0,
        remote: tuple[ipaddress.IPv6Address, int] | None = None,
    ) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]:
        loop = asyncio.get_running_loop()
        sock = self._socket(socket.SOCK_DGRAM)
        try:
            sock.bind((str(self.address), local_port))
            if remote is not None:
                sock.connect((str(remote[0]), remote[1]))
            _, adapter = await loop.create_datagram_endpoint(
                lambda: DatagramAdapter(protocol_factory()), sock=sock
            )
            assert isinstance(adapter, DatagramAdapter) and adapter.transport is not None
            return adapter.transport, adapter.inner
        except BaseException:
            sock.close()
            raise

    # -- address → key -------------------------------------------------------------------
    async def key_for_address(self, address: ipaddress.IPv6Address) -> bytes | None:
        """From the daemon's sessions (and peers), cached; a miss asks the daemon again.

        A packet from ``address`` only reaches the TUN through a session, so a look-up
        that starts after the connection arrived sees it. Concurrent misses share one
        look-up, provided it started after they asked.
        """
        hit = self._cached(address)
        if hit is not None:
            return hit
        asked = time.monotonic()
        while self._refresh is not None:
            started, pending = self._refresh
            await asyncio.shield(pending)
            hit = self._cached(address)
            if hit is not None or started >= asked:
                return hit
        await self._refresh_keys()
        return self._cached(address)

    def _cached(self, address: ipaddress.IPv6Address) -> bytes | None:
        entry = self._keys.get(address)
        if entry is None:
            return None
        key, stamp = entry
        if time.monotonic() - stamp > self.session_ttl:
            del self._keys[address]
            return None
        self._keys.move_to_end(address)
        return key

    async def _refresh_keys(self) -> None:
        pending: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._refresh = (time.monotonic(), pending)
        try:
            sessions = await self.admin.get_sessions()
            peers = await self.admin.get_peers()
            now = time.monotonic()
            pairs = [(s.address, s.key) for s in sessions]
            pairs += [
                (ipaddress.IPv6Address(p.address), p.key) for p in peers if p.key and p.address
            ]
            for addr, key in pairs:
                self._keys[addr] = (key, now)
                self._keys.move_to_end(addr)
            while len(self._keys) > SESSION_CACHE_SIZE:
                self._keys.popitem(last=False)
        finally:
            self._refresh = None
            pending.set_result(None)

    # -- admin -----------------------------------------------------------------------
    async def peers(self) -> list[PeerInfo]:
        return await self.admin.get_peers()

    async def add_peer(self, uri: str) -> None:
        await self.admin.add_peer(uri)

    async def remove_peer(self, uri: str) -> None:
        await self.admin.remove_peer(uri)

    async def ping(
        self, address: ipaddress.IPv6Address, *, count: int, interval: float, timeout: float
    ) -> list[float | None]:
        tun = self._require_tun()
        return await icmp.ping(
            self.netns.socket,
            self.address,
            address,
            count=count,
            interval=interval,
            timeout=timeout,
            device=tun.ifname if self.bind_to_device else None,
        )

    async def status(self) -> dict[str, Any]:
        info = await self.admin.get_self()
        sessions = await self.admin.get_sessions()
        out: dict[str, Any] = {
            "mode": "managed" if self.managed else "attached",
            "admin": str(self.admin),
            "daemon": info.to_json(),
            "tun": self.tun_name,
            "bind_to_device": self.bind_to_device and not self._warned_device,
            "netns": self.netns.path,
            "sessions": [
                {"key": s.key.hex(), "address": str(s.address), "uptime": s.uptime}
                for s in sessions
            ],
        }
        if self.daemon is not None:
            out["daemon_pid"] = self.daemon.pid
            out["daemon_restarts"] = self.daemon.restarts
            out["daemon_log"] = str(self.daemon.log_path)
        return out
