"""Limits every mesh service applies to its peers: how fast, and how many at once.

* :class:`PeerRateLimiter` — a token bucket per peer (``burst`` at once, ``per_minute``
  sustained), at most ``max_peers`` buckets (the least recently used go first, so a
  flood of new addresses cannot grow memory).
* :class:`ConnectionLimiter` — open connections per peer and in total, each capped.
* :func:`peer_address` / :func:`peer_key` — who is on the other end of a mesh
  connection, as the backend authenticated it (never what the peer claims).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager

from core.guard import peer_address

__all__ = ["ConnectionLimiter", "PeerRateLimiter", "TooManyConnections", "peer_address", "peer_key"]


def peer_key(transport: asyncio.BaseTransport) -> bytes | None:
    """The authenticated public key of a mesh connection's peer, where the backend knows it."""
    key = transport.get_extra_info("peer_key")
    return key if isinstance(key, bytes) else None


class PeerRateLimiter:
    """Token buckets per peer, at most ``max_peers`` of them (least recently used go)."""

    def __init__(
        self,
        *,
        burst: int,
        per_minute: float,
        max_peers: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or per_minute <= 0 or max_peers < 1:
            raise ValueError("burst and max_peers must be at least 1, per_minute positive")
        self.burst = float(burst)
        self.rate = per_minute / 60.0  # tokens per second
        self.max_peers = max_peers
        self._clock = clock
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def allow(self, peer: Hashable) -> bool:
        """Take one token from ``peer``'s bucket; False (and nothing taken) when empty."""
        now = self._clock()
        tokens, stamp = self._buckets.pop(peer, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[peer] = (tokens, now)
        while len(self._buckets) > self.max_peers:
            self._buckets.popitem(last=False)
        return allowed

    def __len__(self) -> int:
        return len(self._buckets)


class TooManyConnections(Exception):
    """:meth:`ConnectionLimiter.hold` refused: the peer or the service is at its cap."""


class ConnectionLimiter:
    """Open connections per peer and in total, each with a cap."""

    def __init__(self, *, per_peer: int, total: int) -> None:
        if per_peer < 1 or total < 1:
            raise ValueError("per_peer and total must be at least 1")
        self.per_peer = per_peer
        self.total = total
        self._counts: dict[Hashable, int] = {}
        self._open = 0

    def acquire(self, peer: Hashable) -> bool:
        """Count one more connection from ``peer``; False (nothing counted) at a cap."""
        if self._open >= self.total or self._counts.get(peer, 0) >= self.per_peer:
            return False
        self._counts[peer] = self._counts.get(peer, 0) + 1
        self._open += 1
        return True

    def release(self, peer: Hashable) -> None:
        """One connection from ``peer`` closed (after a successful :meth:`acquire`)."""
        left = self._counts.get(peer, 0) - 1
        if left <= 0:
            self._counts.pop(peer, None)
        else:
            self._counts[peer] = left
        self._open = max(0, self._open - 1)

    @contextmanager
    def hold(self, peer: Hashable) -> Iterator[None]:
        """``with limiter.hold(peer):`` — raises :class:`TooManyConnections` at a cap."""
        if not self.acquire(peer):
            raise TooManyConnections(f"too many connections from {peer} (or in all)")
        try:
            yield
        finally:
            self.release(peer)

    @property
    def open(self) -> int:
        return self._open

    def count(self, peer: Hashable) -> int:
        return self._counts.get(peer, 0)
