"""The embedded node's packet network: ironwood ``network.PacketConn`` on asyncio.

One :class:`PacketNetwork` is one node key on one event loop. It owns the sans-IO
:class:`~core.embedded.router.Router`, the listeners, the links and one ticker task
(keepalives, timeouts, the 1 s router maintenance); :meth:`PacketNetwork.close`
cancels and awaits all of them. Static peers (:meth:`add_peer`) are redialled with
a doubling, capped back-off like yggdrasil's ``links.add``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import resource
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.tasks import cancel_and_wait

from ..address import partial_key_for_subnet, subnet_for_key
from ..limits import ConnectionLimiter
from ..resources import MemoryTrimmer
from .carriers import Carrier, CarrierEnv, CarrierRegistry, Listener
from .config import NetworkConfig
from .links import LinkConnection, PeerURI, parse_peer_uri
from .meta import Meta, encode_meta
from .peers import PeerSession, PollResult, PortAllocator
from .router import Router, RoutingEntry

__all__ = ["PacketNetwork", "PeerEvent", "PeerInfo", "TreeInfo", "subnet_bloom_transform"]

log = logging.getLogger(__name__)

_TICK = 0.25
# Own packets waiting for the end-of-iteration flush beyond which they are written at
# once: bounds the burst one write carries and the memory it holds.
COALESCE_BYTES = 16 * 1024
_REFUSAL_LOG_INTERVAL = 10.0  # at most one "refused N inbound connections" line per this


def inbound_cap(max_links: int) -> int:
    """``max_links``, but never more than half the process's file descriptors: a flood
    of inbound connections must leave descriptors for the control socket and services."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max_links
    return max(1, min(max_links, soft // 2))


def source_of(host: str | None) -> str:
    """Per-source accounting key: an IPv4 address, or the /64 of an IPv6 one (one host
    holds a whole /64, so counting single IPv6 addresses would bound nothing)."""
    if not host:
        return "?"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else ip)


def subnet_bloom_transform(key: bytes) -> bytes:
    """yggdrasil-go's bloom transform: ``address.SubnetForKey(key).GetKey()``.

    Pass it as ``bloom_transform`` to interoperate with real daemons: they look up
    these partial keys, so a node filtering on full keys is never found.
    """
    return partial_key_for_subnet(subnet_for_key(key))


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """One row of ``getPeers``."""

    key: bytes | None
    uri: str
    remote: str
    inbound: bool
    up: bool
    port: int
    priority: int
    cost: int
    rx_bytes: int
    tx_bytes: int
    uptime: float
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class TreeInfo:
    """``getSelf`` / ``getTree``: our place in the spanning tree."""

    key: bytes
    root: bytes
    parent: bytes
    coords: tuple[int, ...]
    entries: tuple[RoutingEntry, ...]
    paths: tuple[tuple[bytes, tuple[int, ...]], ...]

    @property
    def port(self) -> int:
        """The port our parent gave us (0 if we are the root)."""
        return self.coords[-1] if self.coords else 0


@dataclass(frozen=True, slots=True)
class PeerEvent:
    kind: str  # "up" or "down"
    key: bytes
    uri: str
    inbound: bool
    error: str | None = None


@dataclass(slots=True)
class _Link:
    conn: LinkConnection
    session: PeerSession
    since: float


@dataclass(slots=True)
class _Static:
    uri: PeerURI
    task: asyncio.Task[None]
    conn: LinkConnection | None = None
    last_error: str | None = None


class PacketNetwork:
    def __init__(
        self,
        private_seed: bytes,
        *,
        bloom_transform: Callable[[bytes], bytes] | None = None,
        path_notify: Callable[[bytes], None] | None = None,
        config: NetworkConfig | None = None,
        carriers: Mapping[str, Carrier] | None = None,
    ) -> None:
        """``carriers`` adds carriers to (or replaces) the built-in ones by scheme."""
        if len(private_seed) != 32:
            raise ValueError("private_seed must be the 32-byte Ed25519 seed")
        self._seed = bytes(private_seed)
        self.config = config or NetworkConfig()
        sk = Ed25519PrivateKey.from_private_bytes(self._seed)
        self.public_key = sk.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._router = Router(
            self._seed,
            self.config,
            clock=time.monotonic,
            bloom_transform=bloom_transform,
            path_notify=path_notify,
            deliver=self._deliver,
        )
        self.mtu = self._router.mtu
        self._handler: Callable[[bytes, bytes], None] | None = None
        self._links: dict[LinkConnection, _Link] = {}
        self._pending: set[LinkConnection] = set()  # not (yet) established, any direction
        self._inbound: ConnectionLimiter | None = None  # set by start(): rlimit-aware cap
        self._trimmer = MemoryTrimmer()  # a flood's freed TLS buffers go back to the OS
        self._refused = 0
        self._refused_logged_at = -_REFUSAL_LOG_INTERVAL
        self._ports = PortAllocator()
        self._order = 0
        self._statics: dict[str, _Static] = {}
        self._listeners: list[Listener] = []
        self._subscribers: list[Callable[[PeerEvent], None]] = []
        self.carriers = CarrierRegistry(carriers)
        self._env = CarrierEnv(self._seed, self.config)
        self._ticker: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False
        # Output is coalesced: packets sent during one event-loop iteration leave in one
        # write per link at its end (or at once when COALESCE_BYTES are waiting).
        self._flush_handle: asyncio.Handle | None = None
        self._unflushed = 0

    @property
    def router(self) -> Router:
        """The sans-IO router (introspection and tests)."""
        return self._router

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._inbound = ConnectionLimiter(
            per_peer=self.config.max_links_per_source, total=inbound_cap(self.config.max_links)
        )
        self._router.maintenance()  # ironwood runs one at init: we become root
        self._ticker = asyncio.create_task(self._tick_loop(), name="embedded-net-ticker")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        tasks = [s.task for s in self._statics.values()]
        if self._ticker is not None:
            tasks.append(self._ticker)
        for task in tasks:
            task.cancel()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        for listener in self._listeners:
            listener.close()
        conns = list(self._links) + list(self._pending)
        for conn in conns:
            conn.abort()
        await asyncio.gather(*tasks, *(c.wait_closed() for c in conns), return_exceptions=True)
        for listener in self._listeners:
            await listener.wait_closed()
        self._statics.clear()

    def _check_open(self) -> None:
        if not self._started or self._closed:
            raise RuntimeError(
                "PacketNetwork is not running: call start() first, not after close()"
            )

    # -- packets -----------------------------------------------------------------

    def set_handler(self, handler: Callable[[bytes, bytes], None]) -> None:
        self._handler = handler

    def _deliver(self, source: bytes, payload: bytes) -> None:
        if self._handler is None:
            return
        try:
            self._handler(source, payload)
        except Exception:
            log.exception("packet handler raised; packet from %s dropped", source.hex()[:16])

    def send(self, dest_key: bytes, payload: bytes) -> None:
        """Queue ``payload`` for ``dest_key`` (never blocks; looks the path up if needed)."""
        self._check_open()
        self._router.send(dest_key, payload)
        self._unflushed += len(payload)
        if self._unflushed >= COALESCE_BYTES:
            self._flush()
        else:
            self._schedule_flush()

    def send_lookup(self, target_key: bytes) -> None:
        self._check_open()
        self._router.send_lookup(target_key)
        self._flush()

    # -- listeners and peers ----------------------------------------------------------

    def parse_uri(self, uri: str) -> PeerURI:
        """``uri`` parsed against the schemes this node's carriers speak (ValueError;
        :class:`~core.embedded.carriers.UnknownScheme` names the known schemes)."""
        return parse_peer_uri(uri, self.carriers.schemes)

    async def listen(self, uri: str) -> str:
        """Accept links on ``uri`` (``tcp://[::1]:0``); returns the bound URI."""
        self._check_open()
        parsed = self.parse_uri(uri)
        carrier = self.carriers.get(parsed.scheme)
        if not carrier.can_listen:
            raise ValueError(
                f"{parsed.scheme}:// cannot listen (as yggdrasil-go: put a ws:// listener "
                "behind a reverse proxy that terminates TLS)"
            )

        def new_link(*, server_tls: ssl.SSLContext | None = None) -> LinkConnection:
            return self._new_conn(parsed, inbound=True, server_tls=server_tls)

        listener = await carrier.listen(parsed, new_link, self._env)
        self._listeners.append(listener)
        log.info("%s listener started on %s", parsed.scheme.upper(), listener.uri)
        return listener.uri

    def listener_uris(self) -> list[str]:
        return [listener.uri for listener in self._listeners]

    def carrier_stats(self) -> dict[str, dict[str, int]]:
        """Per scheme: what its listeners refused before a link existed."""
        return {scheme: st.to_json() for scheme, st in sorted(self._env.stats.items())}

    async def _dial(self, uri: PeerURI, conn: LinkConnection) -> None:
        # asyncio.timeout, not wait_for: 3.11's wait_for swallows a cancellation
        # (remove_peer, close) that lands as the connection completes, and a peer loop
        # then redialled on with remove_peer awaiting it forever
        carrier = self.carriers.get(uri.scheme)
        async with asyncio.timeout(self.config.connect_timeout):
            await carrier.dial(uri, conn, self._env)

    def _new_conn(
        self, uri: PeerURI, *, inbound: bool, server_tls: ssl.SSLContext | None = None
    ) -> LinkConnection:
        conn = LinkConnection(
            self,
            meta_bytes=encode_meta(self._seed, priority=uri.priority, password=uri.password),
            uri=uri,
            inbound=inbound,
            local_key=self.public_key,
            handshake_timeout=self.config.handshake_timeout,
            write_high_water=self.config.write_high_water,
            server_tls=server_tls,
        )
        self._pending.add(conn)
        conn.closed.add_done_callback(lambda _f: self._conn_closed(conn))
        return conn

    def _conn_closed(self, conn: LinkConnection) -> None:
        self._pending.discard(conn)
        self._trimmer.ended()
        if conn.admitted and self._inbound is not None:
            self._inbound.release(source_of(conn.source))

    def link_admit(self, conn: LinkConnection) -> bool:
        """Inbound cap (``max_links``, rlimit-aware) and per-source cap
        (``max_links_per_source``); refusals are counted and logged once per interval."""
        if self._closed or self._inbound is None:
            return False
        if self._inbound.acquire(source_of(conn.source)):
            return True
        self._refused += 1
        now = time.monotonic()
        if now - self._refused_logged_at >= _REFUSAL_LOG_INTERVAL:
            log.warning(
                "refused %d inbound link connection(s) since the last report: at most %d at "
                "once, %d per source (max_links, max_links_per_source); latest from %s",
                self._refused,
                self._inbound.total,
                self._inbound.per_peer,
                conn.remote,
            )
            self._refused = 0
            self._refused_logged_at = now
        return False

    @property
    def inbound_open(self) -> int:
        """Inbound connections held now (handshaking or linked)."""
        return 0 if self._inbound is None else self._inbound.open

    @property
    def pending_count(self) -> int:
        """Connections not (yet) established, in both directions."""
        return len(self._pending)

    async def add_peer(self, uri: str) -> None:
        """Keep a link to ``uri`` up, redialling with a capped doubling back-off."""
        self._check_open()
        parsed = self.parse_uri(uri)
        self.carriers.get(parsed.scheme)  # its module loads now: an error shows here
        if parsed.base in self._statics:
            raise ValueError(f"peer {parsed.base} is already configured")
        task = asyncio.create_task(self._static_loop(parsed.base), name=f"peer {parsed.base}")
        self._statics[parsed.base] = _Static(parsed, task)

    async def call(self, uri: str) -> None:
        """Dial ``uri`` once and keep that link while it lasts; no redial (yggdrasil's
        ``CallPeer``, used by LAN discovery). Skipped when the ``?key=`` in ``uri`` is
        already linked. Raises ``OSError``/``TimeoutError`` if the dial fails."""
        self._check_open()
        parsed = self.parse_uri(uri)
        linked = {link.session.key for link in self._links.values()}
        if parsed.pinned_keys and parsed.pinned_keys & linked:
            return
        conn = self._new_conn(parsed, inbound=False)
        try:
            await self._dial(parsed, conn)
        except BaseException:
            conn.abort()
            self._pending.discard(conn)
            raise

    def carrier_link(self, name: str, *, inbound: bool) -> asyncio.Protocol:
        """A link over a carrier the caller supplies (the in-process pipe of
        :mod:`core.testing`): call ``connection_made(transport)`` on what this returns.
        The link speaks the whole protocol (meta handshake, frames, keepalives); it
        shows in :meth:`peers` as ``mem://name:0`` and is never redialled."""
        self._check_open()
        return self._new_conn(PeerURI("mem", name, 0), inbound=inbound)

    async def remove_peer(self, uri: str) -> None:
        base = self.parse_uri(uri).base
        static = self._statics.pop(base, None)
        if static is None:
            raise ValueError(f"peer {base} is not configured")
        await cancel_and_wait(static.task, what=f"the redial loop of {base}")
        if static.conn is not None:
            static.conn.close()

    async def _static_loop(self, base: str) -> None:
        static = self._statics[base]
        uri = static.uri
        cap = uri.max_backoff or self.config.backoff_max
        failures = 0
        while True:
            conn = self._new_conn(uri, inbound=False)
            static.conn = conn
            try:
                await self._dial(uri, conn)
                error = await conn.closed
                if conn.meta is not None:
                    failures = 0
            except (OSError, TimeoutError) as exc:
                error = str(exc) or type(exc).__name__
                self._pending.discard(conn)
            except asyncio.CancelledError:
                conn.abort()
                self._pending.discard(conn)
                raise
            except Exception as exc:  # a bug in a carrier: the peer must not stay down for good
                log.exception("peer %s: dialling failed unexpectedly; redialling", base)
                conn.abort()
                self._pending.discard(conn)
                error = f"{type(exc).__name__}: {exc}"
            static.last_error = error or "connection closed by the remote side"
            if conn.to_self:
                log.warning("peer %s is this node itself: not redialled", base)
                return
            failures = min(failures + 1, 32)
            delay = min(self.config.backoff_min * 2 ** (failures - 1), cap)
            log.debug("peer %s down (%s); redial in %.1fs", base, error, delay)
            await asyncio.sleep(delay)

    # -- LinkOwner ------------------------------------------------------------------

    def link_up(self, conn: LinkConnection, meta: Meta) -> bool:
        if self._closed:
            return False
        self._pending.discard(conn)
        port = self._ports.acquire(meta.public_key)
        now = time.monotonic()
        priority = max(conn.uri.priority, meta.priority)
        session = PeerSession(meta.public_key, port, priority, self._order, self.config, now)
        self._order += 1
        self._links[conn] = _Link(conn, session, now)
        direction = "inbound" if conn.inbound else "outbound"
        log.info("Connected %s: %s@%s", direction, meta.public_key.hex(), conn.remote)
        self._router.add_peer(session)
        self._flush()
        self._emit(PeerEvent("up", meta.public_key, self._uri_of(conn), conn.inbound))
        return True

    def link_data(self, conn: LinkConnection, data: bytes | memoryview) -> None:
        link = self._links.get(conn)
        if link is None:
            return
        now = time.monotonic()
        try:
            for frame in link.session.receive_data(data, now):
                self._router.handle_frame(link.session, frame)
        except ValueError as exc:
            conn.fail(f"protocol error from {link.session.key.hex()[:16]}: {exc}")
        self._schedule_flush()  # answers and forwarded packets leave with the iteration's

    def link_down(self, conn: LinkConnection, error: str | None) -> None:
        link = self._links.pop(conn, None)
        if link is None:
            return
        self._router.remove_peer(link.session)
        self._ports.release(link.session.key)
        direction = "inbound" if conn.inbound else "outbound"
        log.info("Disconnected %s: %s (%s)", direction, link.session.key.hex(), error or "closed")
        self._flush()
        self._emit(PeerEvent("down", link.session.key, self._uri_of(conn), conn.inbound, error))

    def link_writable(self, conn: LinkConnection) -> None:
        self._flush()

    @staticmethod
    def _uri_of(conn: LinkConnection) -> str:
        return f"{conn.uri.scheme}://{conn.remote}" if conn.inbound else conn.uri.base

    # -- timers and output ------------------------------------------------------------

    async def _tick_loop(self) -> None:
        next_maintenance = time.monotonic() + self.config.maintenance_interval
        while True:
            await asyncio.sleep(_TICK)
            now = time.monotonic()
            for conn, link in list(self._links.items()):
                if link.session.poll(now) is PollResult.TIMED_OUT:
                    conn.fail("peer timed out (no reply within peer_timeout)")
            if now >= next_maintenance:
                next_maintenance = now + self.config.maintenance_interval
                self._router.maintenance()
                self._trimmer.maybe_trim(quiet=not self._pending)
            self._flush()

    def maintain(self) -> None:
        """Run the router's periodic maintenance now (tree, paths, blooms), as the ticker
        does every ``maintenance_interval``: an in-memory test mesh converges in
        milliseconds instead of seconds."""
        self._check_open()
        self._router.maintenance()
        self._flush()

    def _schedule_flush(self) -> None:
        """One :meth:`_flush` at the end of this event-loop iteration (at most one)."""
        if self._flush_handle is None and not self._closed:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Write pending frames, one write per link; queued packets only while a link's
        buffer has room."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._unflushed = 0
        high = self.config.write_high_water
        now = time.monotonic()
        backlog = False
        for conn, link in self._links.items():
            link.session.set_now(now)
            data = link.session.data_to_send(conn.write_budget(high))
            conn.write(data)
            if len(link.session.queue) and not conn.paused:
                backlog = True  # the socket took it all: keep going on the next loop turn
        if backlog:
            self._schedule_flush()

    # -- introspection ------------------------------------------------------------------

    def peers(self) -> list[PeerInfo]:
        now = time.monotonic()
        out: list[PeerInfo] = []
        seen: set[LinkConnection] = set()
        for conn, link in self._links.items():
            seen.add(conn)
            s = link.session
            out.append(
                PeerInfo(
                    s.key, self._uri_of(conn), conn.remote, conn.inbound, True, s.port, s.prio,
                    self._router.tree.cost(s), s.rx_bytes, s.tx_bytes, now - link.since,
                )
            )  # fmt: skip
        for static in self._statics.values():
            if static.conn is not None and static.conn in seen:
                continue
            out.append(
                PeerInfo(
                    None, static.uri.base, static.uri.hostport, False, False, 0,
                    static.uri.priority, 0, 0, 0, 0.0, static.last_error,
                )
            )  # fmt: skip
        return out

    def tree(self) -> TreeInfo:
        r = self._router
        paths = tuple((k, p.path) for k, p in r.pathfinder.paths.items())
        return TreeInfo(
            self.public_key, r.root(), r.tree.parent(), r.coords(), tuple(r.entries()), paths
        )

    def subscribe_peer_events(self, cb: Callable[[PeerEvent], None]) -> Callable[[], None]:
        self._subscribers.append(cb)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(cb)

        return unsubscribe

    def _emit(self, event: PeerEvent) -> None:
        for cb in list(self._subscribers):
            try:
                cb(event)
            except Exception:
                log.exception("peer event subscriber raised")
