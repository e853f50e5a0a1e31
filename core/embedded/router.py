"""The ironwood router: message dispatch and greedy tree routing (``network/router.go``).

:class:`Router` is the sans-IO heart of one node: links feed it decoded frame bodies
(:meth:`Router.handle_frame`), it answers through the links' ``send_direct`` /
``send_queued`` and hands traffic addressed to us to ``deliver``. The owner calls
:meth:`Router.maintenance` every second. Time comes from the injected ``clock``.

Forwarding (``_lookup``): the packet carries the destination's tree coordinates and
a *watermark*, the lowest tree distance to the destination seen so far. A node only
forwards if its own distance is below the watermark (then lowers it), and only to
peers strictly closer than itself; among those it minimises link cost per hop of
progress, then prefers the lower-priority link to the same node, then the shorter
distance, then the older link. This makes next hops loop-free.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from .bloom import Bloom, BloomExchange
from .config import NetworkConfig
from .pathfinder import Pathfinder, PathInfo
from .tree import Tree, TreeLink, check_announce, check_res
from .wire import (
    MAX_UINT64,
    Announce,
    PacketType,
    PathBroken,
    PathLookup,
    PathNotify,
    SigReq,
    SigRes,
    Traffic,
    chop_path,
    chop_uvarint,
)

__all__ = ["Router", "RoutingEntry"]

log = logging.getLogger(__name__)

MAX_ROUTES = 4096  # cached routes of own traffic (one per destination in use)


@dataclass(frozen=True, slots=True)
class RoutingEntry:
    key: bytes
    parent: bytes
    sequence: int


@dataclass(slots=True)
class _Route:
    """How our own traffic to one destination leaves, while nothing it was derived from
    changed: the path it was built from (the pathfinder's entry and its path), the tree
    version (our coordinates, peers, link costs), the next hop and the traffic body up
    to the payload (path, our coordinates, keys, the watermark after our hop)."""

    version: int
    info: PathInfo
    path: tuple[int, ...]
    hop: TreeLink
    head: bytes


class Router:
    def __init__(
        self,
        private_seed: bytes,
        config: NetworkConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
        bloom_transform: Callable[[bytes], bytes] | None = None,
        path_notify: Callable[[bytes], None] | None = None,
        deliver: Callable[[bytes, bytes], None] | None = None,
        nonce: Callable[[], int] | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self.tree = Tree(private_seed, config, nonce=nonce)
        self.key = self.tree.key
        self.blooms = BloomExchange(self.tree, bloom_transform or (lambda k: k))
        self.pathfinder = Pathfinder(
            self.tree,
            self.blooms,
            next_hop=self.next_hop,
            forward=self._forward_own,
            path_timeout=config.path_timeout,
            path_throttle=config.path_throttle,
            max_rumors=config.max_pending_lookups,
            wallclock=wallclock,
            path_notify=path_notify or (lambda key: None),
        )
        self.deliver: Callable[[bytes, bytes], None] = deliver or (lambda src, data: None)
        self.mtu = config.peer_max_message_size - Traffic.overhead()
        self._routes: dict[bytes, _Route] = {}
        self._handlers: dict[int, Callable[[TreeLink, bytes], None]] = {
            PacketType.DUMMY: lambda link, body: None,
            PacketType.KEEPALIVE: lambda link, body: None,
            PacketType.SIG_REQ: self._on_sigreq,
            PacketType.SIG_RES: self._on_sigres,
            PacketType.ANNOUNCE: self._on_announce,
            PacketType.BLOOM_FILTER: self._on_bloom,
            PacketType.PATH_LOOKUP: self._on_lookup,
            PacketType.PATH_NOTIFY: self._on_notify,
            PacketType.PATH_BROKEN: self._on_broken,
            PacketType.TRAFFIC: self._on_traffic,
        }

    # -- peers ----------------------------------------------------------------

    def add_peer(self, link: TreeLink) -> None:
        """``router.addPeer``: start the SigReq exchange and send our current bloom."""
        if self.tree.add_peer(link, self._clock()):
            self.blooms.add_info(link.key)
        self.blooms.send_current(link)

    def remove_peer(self, link: TreeLink) -> None:
        if self.tree.remove_peer(link):
            self.blooms.remove_info(link.key)
        else:
            # the remote's view of our bloom may be racy: resend to its other links
            for other in self.tree.peers.get(link.key, {}):
                self.blooms.send_current(other)

    def maintenance(self) -> None:
        now = self._clock()
        self.tree.expire(now)
        self.pathfinder.expire(now)
        self.tree.maintenance(now)
        self.blooms.maintenance()

    # -- inbound frames -------------------------------------------------------

    def handle_frame(self, link: TreeLink, frame: bytes) -> None:
        """One frame body (type byte first). Raises ValueError: the link must close."""
        if not frame:
            raise ValueError("empty message")
        handler = self._handlers.get(frame[0])
        if handler is None:
            raise ValueError(f"unrecognized message type {frame[0]}")
        handler(link, frame[1:])

    def _on_sigreq(self, link: TreeLink, body: bytes) -> None:
        self.tree.handle_request(link, SigReq.parse(body))

    def _on_sigres(self, link: TreeLink, body: bytes) -> None:
        res = SigRes.parse(body)
        if not check_res(res, self.key, link.key):
            raise ValueError("SigRes signature does not verify")
        rtt = max(self._clock() - link.sigreq_sent_at, 0.0)
        self.tree.handle_response(link, res, int(rtt * 1e9))

    def _on_announce(self, link: TreeLink, body: bytes) -> None:
        ann = Announce.parse(body)
        if not check_announce(ann):
            raise ValueError("Announce signatures do not verify")
        self.tree.handle_announce(link, ann, self._clock())

    def _on_bloom(self, link: TreeLink, body: bytes) -> None:
        self.blooms.handle_bloom(link.key, Bloom.parse(body))

    def _on_lookup(self, link: TreeLink, body: bytes) -> None:
        self.pathfinder.handle_lookup(link, PathLookup.parse(body), self._clock())

    def _on_notify(self, link: TreeLink, body: bytes) -> None:
        self.pathfinder.handle_notify(link, PathNotify.parse(body), self._clock())

    def _on_broken(self, link: TreeLink, body: bytes) -> None:
        self.pathfinder.handle_broken(PathBroken.parse(body), self._clock())

    def _on_traffic(self, link: TreeLink, body: bytes) -> None:
        if not self._deliver_for_us(body):
            self.handle_traffic(Traffic.parse(body))

    def _deliver_for_us(self, body: bytes) -> bool:
        """The receive fast path: traffic for us, at our own coordinates, is delivered
        straight from the frame body (no :class:`Traffic` object). False for anything
        else (forwarding, a broken path): the general path handles it.

        At distance 0 from the packet's coordinates no peer is closer, so
        :meth:`next_hop` would find no hop and :meth:`handle_traffic` deliver it."""
        path, offset = chop_path(body, 0)  # the destination's coordinates
        _, offset = chop_path(body, offset)  # the source's
        end = offset + 64
        if len(body) < end:
            return False  # Traffic.parse says what is wrong
        dest = body[offset + 32 : end]
        if dest != self.key or self.tree.dist(path, self.key) != 0:
            return False
        _, payload_at = chop_uvarint(body, end)  # the watermark
        source = bytes(body[offset : end - 32])
        self.pathfinder.reset_timeout(source, self._clock())
        self.deliver(source, bytes(body[payload_at:]))
        return True

    # -- traffic --------------------------------------------------------------

    def send(self, dest: bytes, payload: bytes) -> None:
        """``PacketConn.WriteTo``: never blocks; queues behind a lookup if needed."""
        if len(dest) != 32:
            raise ValueError(f"destination key must be 32 bytes, got {len(dest)}")
        if len(payload) > self.mtu:
            raise ValueError(f"payload of {len(payload)} bytes exceeds the MTU ({self.mtu})")
        route = self._route(dest)
        if route is not None:  # the fast path: a known path, nothing changed since
            route.info.traffic = payload  # the pathfinder's traffic cache, as below
            route.hop.send_queued(PacketType.TRAFFIC, route.head + payload, self.key, dest)
            return
        tr = Traffic((), (), self.key, bytes(dest), MAX_UINT64, bytes(payload))
        self.pathfinder.handle_own_traffic(tr, self._clock())

    def _route(self, dest: bytes) -> _Route | None:
        """The cached route to ``dest`` if still valid, else a new one; ``None`` when
        there is no path yet or no next hop (the general path looks up or reports)."""
        info = self.pathfinder.paths.get(dest)
        if info is None:
            return None
        route = self._routes.get(dest)
        version = self.tree.version
        if (
            route is not None
            and route.version == version
            and route.info is info  # identity: the pathfinder's own entry...
            and route.path is info.path  # ...still holding the path the head was made for
        ):
            return route
        hop, watermark = self.next_hop(info.path, MAX_UINT64)
        if hop is None:
            self._routes.pop(dest, None)
            return None
        from_path = self.tree.root_and_path(self.key)[1]
        head = bytes(Traffic(info.path, from_path, self.key, bytes(dest), watermark, b""))
        if len(self._routes) >= MAX_ROUTES and dest not in self._routes:
            self._routes.clear()
        route = self._routes[dest] = _Route(version, info, info.path, hop, head)
        return route

    def send_lookup(self, target: bytes) -> None:
        if len(target) != 32:
            raise ValueError(f"lookup key must be 32 bytes, got {len(target)}")
        self.pathfinder.rumor_send_lookup(bytes(target), self._clock())

    def _forward_own(self, tr: Traffic) -> None:
        self.handle_traffic(tr)

    def handle_traffic(self, tr: Traffic) -> None:
        hop, watermark = self.next_hop(tr.path, tr.watermark)
        if hop is not None:
            fwd = replace(tr, watermark=watermark)
            hop.send_queued(PacketType.TRAFFIC, bytes(fwd), fwd.source, fwd.dest)
        elif tr.dest == self.key:
            self.pathfinder.reset_timeout(tr.source, self._clock())
            self.deliver(tr.source, tr.payload)
        else:
            self.pathfinder.do_broken(tr, self._clock())

    def next_hop(self, path: tuple[int, ...], watermark: int) -> tuple[TreeLink | None, int]:
        """``router._lookup``: the next link towards ``path`` and the new watermark."""
        tree = self.tree
        self_dist = tree.dist(path, self.key)
        if self_dist >= watermark:
            return None, watermark
        watermark = self_dist
        candidates = [
            link
            for key, links in tree.peers.items()
            if tree.dist(path, key) < self_dist
            for link in links
        ]
        best: TreeLink | None = None
        best_cpd = best_dist = MAX_UINT64
        for link in candidates:
            dist = tree.dist(path, link.key)
            cpd = tree.cost(link) // (self_dist - dist)
            if best is not None and not _prefer(link, cpd, dist, best, best_cpd, best_dist):
                continue
            best, best_cpd, best_dist = link, cpd, dist
        return best, watermark

    # -- introspection --------------------------------------------------------

    def coords(self) -> tuple[int, ...]:
        return self.tree.root_and_path(self.key)[1]

    def root(self) -> bytes:
        return self.tree.root_and_path(self.key)[0]

    def entries(self) -> list[RoutingEntry]:
        return [
            RoutingEntry(key, info.parent, info.res.seq) for key, info in self.tree.infos.items()
        ]


def _prefer(
    link: TreeLink, cpd: int, dist: int, best: TreeLink, best_cpd: int, best_dist: int
) -> bool:
    """The ordered tie-breaks of ``router._lookup`` (a Go switch; first match wins)."""
    if link.key == best.key and link.prio != best.prio:
        return link.prio < best.prio  # same node: the lower-priority link
    if cpd != best_cpd:
        return cpd < best_cpd  # cost per unit of progress
    if dist != best_dist:
        return dist < best_dist  # then tree distance
    return link.order < best.order  # then the longest-up link
