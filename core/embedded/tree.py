"""The ironwood spanning tree (the tree half of ``network/router.go``, commit 743fe2f).

Sans-IO: the owner calls the ``handle_*`` methods as messages arrive and
:meth:`Tree.maintenance` once a second, passing the current monotonic time; the tree
sends through the :class:`TreeLink` objects of its peers. Timers (``time.AfterFunc``
in Go) are deadlines checked by :meth:`Tree.expire`.

The root is the lowest public key reachable; each node picks as parent the peer
with the lowest root, preferring lower latency-weighted distance. A node's info is
``(parent, seq, nonce, port, psig, sig)``: the parent signs (node, parent, seq,
nonce, port) in a SigRes, the node signs the same bytes, and the pair is flooded as
an Announce. ``_update`` and ``_send_announces`` follow ironwood literally: the
comment there says the logic must be identical on every node.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .config import NetworkConfig
from .wire import MAX_UINT64, Announce, PacketType, SigReq, SigRes

__all__ = ["UNKNOWN_LATENCY_NS", "RouterInfo", "Tree", "TreeLink", "verify"]

log = logging.getLogger(__name__)

UNKNOWN_LATENCY_NS = (1 << 32) - 1  # routerUnknownLatency: Duration(^uint32(0))


class TreeLink(Protocol):
    """One connection to a peer, as the router sees it (ironwood ``*peer``)."""

    key: bytes
    port: int
    prio: int
    order: int
    sigreq_sent_at: float

    def send_direct(self, ptype: PacketType, body: bytes) -> None: ...

    def send_queued(self, ptype: PacketType, body: bytes, source: bytes, dest: bytes) -> None: ...


def verify(key: bytes, message: bytes, sig: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(sig, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def check_res(res: SigRes, node: bytes, parent: bytes) -> bool:
    return verify(parent, res.bytes_for_sig(node, parent), res.psig)


def check_announce(ann: Announce) -> bool:
    """``routerAnnounce.check``: port 0 only for a root; both signatures valid."""
    if ann.res.port == 0 and ann.key != ann.parent:
        return False
    msg = ann.res.bytes_for_sig(ann.key, ann.parent)
    return verify(ann.key, msg, ann.sig) and verify(ann.parent, msg, ann.res.psig)


@dataclass(frozen=True, slots=True)
class RouterInfo:
    parent: bytes
    res: SigRes
    sig: bytes

    def announce(self, key: bytes) -> Announce:
        return Announce(key, self.parent, self.res, self.sig)


class Tree:
    """Spanning-tree state of one node (ironwood ``router`` minus blooms/pathfinder)."""

    def __init__(
        self,
        private_seed: bytes,
        config: NetworkConfig,
        *,
        nonce: Callable[[], int] | None = None,
    ) -> None:
        self._sk = Ed25519PrivateKey.from_private_bytes(private_seed)
        self.key = self._sk.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._config = config
        self._nonce = nonce or (lambda: secrets.randbits(64))
        self.peers: dict[bytes, dict[TreeLink, None]] = {}
        self.sent: dict[bytes, set[bytes]] = {}
        self.infos: dict[bytes, RouterInfo] = {}
        self._deadlines: dict[bytes, float] = {}  # key -> refresh (self) / expiry (others)
        self._cache: dict[bytes, tuple[int, ...]] = {}
        # Bumped whenever anything next hops depend on may have changed (coordinates,
        # peers, link costs): the router's cached routes are valid for one version.
        self.version = 0
        self.lags: dict[TreeLink, int] = {}  # nanoseconds
        self.requests: dict[bytes, SigReq] = {}
        self.responses: dict[bytes, SigRes] = {}
        self._responded: set[TreeLink] = set()
        self._res_seqs: dict[bytes, int] = {}
        self._res_seq_ctr = 0
        self.refresh = False
        self._do_root1 = False
        self._do_root2 = True  # become root at the first maintenance
        self.on_change: Callable[[], None] = lambda: None

    def sign(self, message: bytes) -> bytes:
        return self._sk.sign(message)

    # -- peers --------------------------------------------------------------

    def add_peer(self, link: TreeLink, now: float) -> bool:
        """``router.addPeer`` (tree part). Returns True if ``link.key`` is a new peer node."""
        new = link.key not in self.peers
        if new:
            self.peers[link.key] = {}
            self.sent[link.key] = set()
        else:
            for k in self.sent[link.key]:
                link.send_direct(PacketType.ANNOUNCE, bytes(self.infos[k].announce(k)))
        self.peers[link.key][link] = None
        self.lags[link] = UNKNOWN_LATENCY_NS
        self.version += 1
        if link.key not in self.requests:
            self.requests[link.key] = self._new_req()
        self._responded.discard(link)
        self._send_sigreq(link, self.requests[link.key], now)
        return new

    def remove_peer(self, link: TreeLink) -> bool:
        """``router.removePeer`` (tree part). Returns True if no link to that node is left."""
        links = self.peers.get(link.key, {})
        links.pop(link, None)
        self.lags.pop(link, None)
        self.version += 1
        self._responded.discard(link)
        if links:
            return False
        key = link.key
        self.peers.pop(key, None)
        self.sent.pop(key, None)
        self.requests.pop(key, None)
        self.responses.pop(key, None)
        self._res_seqs.pop(key, None)
        self._cache.pop(key, None)
        return True

    def _send_sigreq(self, link: TreeLink, req: SigReq, now: float) -> None:
        link.sigreq_sent_at = now
        link.send_direct(PacketType.SIG_REQ, bytes(req))

    # -- maintenance ----------------------------------------------------------

    def expire(self, now: float) -> None:
        """Fire the ``time.AfterFunc`` timers of ``_update`` whose deadline passed."""
        for key, deadline in list(self._deadlines.items()):
            if deadline > now:
                continue
            if key == self.key:
                self.refresh = True
                del self._deadlines[key]
                continue
            del self._deadlines[key]
            self.infos.pop(key, None)
            for sent in self.sent.values():
                sent.discard(key)
            self._cache.clear()
            self.version += 1
            self.on_change()

    def maintenance(self, now: float) -> None:
        """``_doMaintenance`` without the bloom step (the router runs that next)."""
        self._do_root2 = self._do_root2 or self._do_root1
        self._cache.clear()
        self.version += 1
        self._fix(now)
        self._send_announces()

    def _cost(self, link: TreeLink) -> int:
        return max(self.lags.get(link, 0) // 1_000_000, 1)  # Go: Milliseconds(), 0 -> 1

    def _fix(self, now: float) -> None:
        best_root = best_parent = self.key
        best_cost = MAX_UINT64
        self_info = self.infos.get(self.key)
        self_parent = self_info.parent if self_info else bytes(32)
        if self_parent in self.peers:
            root, dists = self._root_and_dists(self.key)
            if root < best_root:
                cost = MAX_UINT64
                for link in self.peers[self_parent]:
                    cost = min(cost, (dists[root] * self._cost(link)) & MAX_UINT64)
                best_root, best_parent, best_cost = root, self_parent, cost
        for pk in self.responses:
            if pk not in self.infos:
                continue
            p_root, p_dists = self._root_and_dists(pk)
            if self.key in p_dists:
                continue  # would loop through us
            cost = MAX_UINT64
            for link in self.peers.get(pk, {}):
                cost = min(cost, (p_dists[p_root] * self._cost(link)) & MAX_UINT64)
            if p_root < best_root:
                best_root, best_parent, best_cost = p_root, pk, cost
            elif p_root != best_root:
                continue
            if (self.refresh and (cost * 2) & MAX_UINT64 < best_cost) or (
                best_parent != self_parent and cost < best_cost
            ):
                best_root, best_parent, best_cost = p_root, pk, cost
        if not (self.refresh or self._do_root1 or self._do_root2 or self_parent != best_parent):
            return
        res = self.responses.get(best_parent)
        if res is not None and best_root != self.key and self._use_response(best_parent, res, now):
            self.refresh = self._do_root1 = self._do_root2 = False
            self._send_reqs(now)
        elif self._do_root2:
            self._become_root(now)
            self.refresh = self._do_root1 = self._do_root2 = False
            self._send_reqs(now)
        elif not self._do_root1:
            self._do_root1 = True

    def _send_announces(self) -> None:
        # "This is insanely delicate ... Change nothing here." (ironwood)
        self_anc = self.ancestry(self.key)
        for peer_key, sent in self.sent.items():
            to_send: list[bytes] = []
            for k in self_anc:
                if k not in sent:
                    to_send.append(k)
                    sent.add(k)
            for k in self.ancestry(peer_key):
                if k not in sent:
                    to_send.append(k)
                    sent.add(k)
            anns = [bytes(self.infos[k].announce(k)) for k in to_send]
            for link in self.peers.get(peer_key, {}):
                for ann in anns:
                    link.send_direct(PacketType.ANNOUNCE, ann)

    def _new_req(self) -> SigReq:
        info = self.infos.get(self.key)
        return SigReq(((info.res.seq if info else 0) + 1) & MAX_UINT64, self._nonce())

    def _clear_reqs(self) -> None:
        self.requests.clear()
        self.responses.clear()
        self._res_seqs.clear()
        self._res_seq_ctr = 0

    def _send_reqs(self, now: float) -> None:
        self._clear_reqs()
        for pk, links in self.peers.items():
            req = self._new_req()
            self.requests[pk] = req
            for link in links:
                self._responded.discard(link)
                self._send_sigreq(link, req, now)

    def _become_root(self, now: float) -> None:
        req = self._new_req()
        unsigned = SigRes(req.seq, req.nonce, 0, bytes(64))
        psig = self.sign(unsigned.bytes_for_sig(self.key, self.key))
        res = SigRes(req.seq, req.nonce, 0, psig)
        if not self._update(Announce(self.key, self.key, res, psig), now):
            raise AssertionError("becoming root must always update our own info")

    def _use_response(self, peer_key: bytes, res: SigRes, now: float) -> bool:
        sig = self.sign(res.bytes_for_sig(self.key, peer_key))
        return self._update(RouterInfo(peer_key, res, sig).announce(self.key), now)

    # -- messages -------------------------------------------------------------

    def handle_request(self, link: TreeLink, req: SigReq) -> None:
        unsigned = SigRes(req.seq, req.nonce, link.port, bytes(64))
        psig = self.sign(unsigned.bytes_for_sig(link.key, self.key))
        link.send_direct(PacketType.SIG_RES, bytes(SigRes(req.seq, req.nonce, link.port, psig)))

    def handle_response(self, link: TreeLink, res: SigRes, rtt_ns: int) -> None:
        expected = self.requests.get(link.key, SigReq(0, 0))
        if res.req != expected:
            return
        if link.key not in self.responses:
            self._res_seq_ctr += 1
            self._res_seqs[link.key] = self._res_seq_ctr
            self.responses[link.key] = res
        if link not in self._responded:
            self._responded.add(link)
            lag = self.lags.get(link, UNKNOWN_LATENCY_NS)
            if lag == UNKNOWN_LATENCY_NS:
                self.lags[link] = rtt_ns * 2  # new links start with a penalty
            else:
                self.lags[link] = lag * 7 // 8 + min(rtt_ns, lag * 2) // 8
            self.version += 1

    def handle_announce(self, link: TreeLink, ann: Announce, now: float) -> None:
        sent = self.sent.setdefault(link.key, set())
        if self._update(ann, now):
            if ann.key == self.key:
                self.refresh = True  # our own info came back: we restarted, re-sign
            sent.add(ann.key)
            return
        old = self.infos.get(ann.key)
        sent.add(ann.key)
        if old is not None and RouterInfo(ann.parent, ann.res, ann.sig) != old:
            link.send_direct(PacketType.ANNOUNCE, bytes(old.announce(ann.key)))

    def _update(self, ann: Announce, now: float) -> bool:
        info = self.infos.get(ann.key)
        if info is not None:
            # XXX DO NOT CHANGE: must be the same on every node (ironwood router._update)
            if info.res.seq > ann.res.seq:
                return False
            if info.res.seq == ann.res.seq:
                if info.parent < ann.parent:
                    return False
                if not (ann.parent < info.parent) and not (ann.res.nonce < info.res.nonce):
                    return False
        for sent in self.sent.values():
            sent.discard(ann.key)
        self._cache.clear()
        self.version += 1
        if ann.key == self.key:
            self._deadlines[ann.key] = now + self._config.router_refresh
        else:
            self._deadlines[ann.key] = now + self._config.router_timeout
        self.infos[ann.key] = RouterInfo(ann.parent, ann.res, ann.sig)
        self.on_change()
        return True

    # -- coordinates ----------------------------------------------------------

    def _root_and_dists(self, dest: bytes) -> tuple[bytes, dict[bytes, int]]:
        dists: dict[bytes, int] = {}
        nxt = dest
        root = bytes(32)
        dist = 0
        while nxt not in dists:
            info = self.infos.get(nxt)
            if info is None:
                break
            root = nxt
            dists[nxt] = dist
            dist += 1
            nxt = info.parent
        return root, dists

    def root_and_path(self, dest: bytes) -> tuple[bytes, tuple[int, ...]]:
        """``_getRootAndPath``: the root and the ports from it down to ``dest``."""
        ports: list[int] = []
        visited: set[bytes] = set()
        nxt = dest
        root = dest
        while True:
            if nxt in visited:
                return dest, ()
            info = self.infos.get(nxt)
            if info is None:
                return dest, ()
            root = nxt
            visited.add(nxt)
            if nxt == info.parent:
                break
            ports.append(info.res.port)
            nxt = info.parent
        ports.reverse()
        return root, tuple(ports)

    def dist(self, dest_path: tuple[int, ...], key: bytes) -> int:
        """``_getDist``: tree hops between ``key`` and the coordinates ``dest_path``."""
        key_path = self._cache.get(key)
        if key_path is None:
            key_path = self.root_and_path(key)[1]
            self._cache[key] = key_path
        dist = len(key_path) + len(dest_path)
        for a, b in zip(key_path, dest_path, strict=False):
            if a != b:
                break
            dist -= 2
        return dist

    def ancestry(self, key: bytes) -> list[bytes]:
        """``_getAncestry``: from the root (first) down to ``key``."""
        anc: list[bytes] = []
        here = key
        while here not in anc:
            info = self.infos.get(here)
            if info is None:
                break
            anc.append(here)
            here = info.parent
        anc.reverse()
        return anc

    def cost(self, link: TreeLink) -> int:
        return self._cost(link)

    def parent(self) -> bytes:
        info = self.infos.get(self.key)
        return info.parent if info else self.key
