"""Ironwood path discovery (``network/pathfinder.go``, commit 743fe2f).

To reach a key we have no path for, a node floods a *lookup* along tree links whose
bloom filters match the (transformed) key. The node whose transformed key matches
answers with a signed *notify* carrying its coordinates, routed greedily back to the
lookup's ``from`` coordinates. Traffic then carries the destination's coordinates;
a node that cannot forward it sends a *broken* notice back to the source, which looks
the path up again.

Sans-IO like the tree: the :class:`~core.embedded.router.Router` owns one
:class:`Pathfinder` and passes the time in; timers are deadlines checked by
:meth:`Pathfinder.expire`. The traffic cache (``pathfinderTrafficCache``) is kept:
the last packet to a destination is re-sent when its path changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from .bloom import BloomExchange
from .tree import Tree, TreeLink, verify
from .wire import (
    MAX_UINT64,
    PacketType,
    PathBroken,
    PathLookup,
    PathNotify,
    PathNotifyInfo,
    Traffic,
)

__all__ = ["PathInfo", "Pathfinder"]

log = logging.getLogger(__name__)

# (path, watermark) -> (next hop or None, updated watermark)
NextHop = Callable[[tuple[int, ...], int], tuple[TreeLink | None, int]]


@dataclass(slots=True)
class PathInfo:
    path: tuple[int, ...]
    seq: int
    req_time: float
    expires: float
    traffic: bytes | None = None  # the payload of our last packet on this path
    broken: bool = False


@dataclass(slots=True)
class _Rumor:
    send_time: float
    expires: float
    traffic: Traffic | None = None


class Pathfinder:
    def __init__(
        self,
        tree: Tree,
        blooms: BloomExchange,
        *,
        next_hop: NextHop,
        forward: Callable[[Traffic], None],
        path_timeout: float,
        path_throttle: float,
        max_rumors: int = 4096,
        wallclock: Callable[[], float],
        path_notify: Callable[[bytes], None],
    ) -> None:
        self._tree = tree
        self._blooms = blooms
        self._next_hop = next_hop
        self._forward = forward
        self._timeout = path_timeout
        self._throttle = path_throttle
        self._max_rumors = max_rumors
        self._wallclock = wallclock
        self._notify_cb = path_notify
        self._info = self._signed(PathNotifyInfo(0, ()))
        self.paths: dict[bytes, PathInfo] = {}
        self.rumors: dict[bytes, _Rumor] = {}
        self.lookup_logger: Callable[[PathLookup], None] | None = None

    def _signed(self, info: PathNotifyInfo) -> PathNotifyInfo:
        return replace(info, sig=self._tree.sign(info.bytes_for_sig()))

    def expire(self, now: float) -> None:
        for key in [k for k, v in self.paths.items() if v.expires <= now]:
            del self.paths[key]
        for key in [k for k, v in self.rumors.items() if v.expires <= now]:
            del self.rumors[key]

    # -- lookups --------------------------------------------------------------

    def send_lookup(self, dest: bytes, now: float) -> bool:
        """``_sendLookup``, throttled per destination; True if it reached a link.

        A lookup that reached no link (sent before any link was up, or before a new
        link's bloom arrived) does not count against the throttle, so the first lookup
        once a link is up goes out at once instead of up to ``path_throttle`` later."""
        info = self.paths.get(dest)
        if info is not None and now - info.req_time < self._throttle:
            return False
        me = self._tree.key
        lookup = PathLookup(me, dest, self._tree.root_and_path(me)[1])
        sent = self._handle_lookup(me, lookup, now) > 0
        if info is not None and sent:
            info.req_time = now  # as Go: the throttle runs from the last lookup sent
        return sent

    def handle_lookup(self, link: TreeLink, lookup: PathLookup, now: float) -> None:
        if not self._blooms.is_on_tree(link.key):
            return
        self._handle_lookup(link.key, lookup, now)

    def _handle_lookup(self, from_key: bytes, lookup: PathLookup, now: float) -> int:
        """Forward ``lookup`` (answer it if it is ours); how many links it went to."""
        if self.lookup_logger is not None:
            self.lookup_logger(lookup)
        body = bytes(lookup)
        sent = 0
        for link in self._blooms.multicast_targets(from_key, lookup.dest):
            link.send_queued(PacketType.PATH_LOOKUP, body, lookup.source, lookup.dest)
            sent += 1
        me = self._tree.key
        if self._blooms.x_key(lookup.dest) != self._blooms.x_key(me):
            return sent
        coords = self._tree.root_and_path(me)[1]
        info = PathNotifyInfo(int(self._wallclock()) & MAX_UINT64, coords)
        if not self._info.same_content(info):
            self._info = self._signed(info)
        notify = PathNotify(lookup.from_path, MAX_UINT64, me, lookup.source, self._info)
        self._handle_notify(me, notify, now)
        return sent

    # -- notifies -------------------------------------------------------------

    def handle_notify(self, link: TreeLink, notify: PathNotify, now: float) -> None:
        self._handle_notify(link.key, notify, now)

    def _handle_notify(self, from_key: bytes, notify: PathNotify, now: float) -> None:
        hop, watermark = self._next_hop(notify.path, notify.watermark)
        if hop is not None:
            fwd = replace(notify, watermark=watermark)
            hop.send_queued(PacketType.PATH_NOTIFY, bytes(fwd), fwd.source, fwd.dest)
            return
        if notify.dest != self._tree.key:
            return
        source = notify.source
        info = self.paths.get(source)
        if info is not None:
            if notify.info.seq <= info.seq:
                return
            if notify.info.path == info.path:
                return  # nothing new (pathNotifyInfo.equal with the old path)
            if not self._check(notify):
                return
            info.expires = now + self._timeout
        else:
            xform = self._blooms.x_key(source)
            rumor = self.rumors.get(xform)
            if rumor is None or not self._check(notify):
                return
            info = PathInfo((), 0, now, now + self._timeout)
            if rumor.traffic is not None and rumor.traffic.dest == source:
                info.traffic = rumor.traffic.payload
                rumor.traffic = None
        info.path = notify.info.path
        info.seq = notify.info.seq
        info.broken = False
        cached = info.traffic
        info.traffic = None
        self.paths[source] = info
        self._notify_cb(source)
        if cached is not None:  # Go defers this until after the notify callback
            me = self._tree.key
            self.handle_own_traffic(Traffic((), (), me, source, MAX_UINT64, cached), now)

    @staticmethod
    def _check(notify: PathNotify) -> bool:
        return verify(notify.source, notify.info.bytes_for_sig(), notify.info.sig)

    # -- traffic --------------------------------------------------------------

    def rumor_send_lookup(self, dest: bytes, now: float) -> None:
        xform = self._blooms.x_key(dest)
        rumor = self.rumors.get(xform)
        if rumor is not None:
            if now - rumor.send_time < self._throttle:
                return
            rumor.expires = now + self._timeout
        else:
            if len(self.rumors) >= self._max_rumors:
                # bounded (ironwood is not): forget the destination asked for longest ago
                oldest = min(self.rumors, key=lambda k: self.rumors[k].send_time)
                del self.rumors[oldest]
            rumor = self.rumors[xform] = _Rumor(float("-inf"), now + self._timeout)
        if self.send_lookup(dest, now):
            # throttled per destination, and only once a lookup reached a link: one
            # sent into no link (before the link to the destination came up, e.g. after
            # a peer restart) must not hold back the next one for path_throttle
            rumor.send_time = now

    def handle_own_traffic(self, tr: Traffic, now: float) -> None:
        """``_handleTraffic``: our packet; route it if we know a path, else look it up."""
        info = self.paths.get(tr.dest)
        if info is not None:
            from_path = self._tree.root_and_path(self._tree.key)[1]
            tr = replace(tr, path=info.path, from_path=from_path)
            info.traffic = tr.payload
            self._forward(tr)
            return
        self.rumor_send_lookup(tr.dest, now)
        rumor = self.rumors.get(self._blooms.x_key(tr.dest))
        if rumor is not None:
            rumor.traffic = tr

    def do_broken(self, tr: Traffic, now: float) -> None:
        broken = PathBroken(tr.from_path, MAX_UINT64, tr.source, tr.dest)
        self.handle_broken(broken, now)

    def handle_broken(self, broken: PathBroken, now: float) -> None:
        hop, watermark = self._next_hop(broken.path, broken.watermark)
        if hop is not None:
            fwd = replace(broken, watermark=watermark)
            hop.send_queued(PacketType.PATH_BROKEN, bytes(fwd), fwd.source, fwd.dest)
            return
        if broken.source != self._tree.key:
            return
        info = self.paths.get(broken.dest)
        if info is not None:
            info.broken = True
            self.send_lookup(broken.dest, now)

    def reset_timeout(self, key: bytes, now: float) -> None:
        info = self.paths.get(key)
        if info is not None and not info.broken:
            info.expires = now + self._timeout
