"""Per-peer limits: token buckets that refill and stay bounded, connection caps per peer
and in total, and the authenticated peer of a transport."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import pytest

from core import ConnectionLimiter, PeerRateLimiter, TooManyConnections, peer_address, peer_key


def test_a_bucket_allows_the_burst_then_refills_at_the_rate() -> None:
    now = [0.0]
    limiter = PeerRateLimiter(burst=3, per_minute=30, clock=lambda: now[0])
    assert [limiter.allow("p") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("q")  # another peer has its own bucket
    now[0] += 1.9  # 0.5 token per second: not yet one token
    assert not limiter.allow("p")
    now[0] += 0.2
    assert limiter.allow("p") and not limiter.allow("p")
    now[0] += 3600  # refills up to the burst, not beyond
    assert sum(limiter.allow("p") for _ in range(10)) == 3


def test_the_bucket_table_is_bounded_least_recently_used_first() -> None:
    now = [0.0]
    limiter = PeerRateLimiter(burst=1, per_minute=1, max_peers=3, clock=lambda: now[0])
    assert limiter.allow("old") and not limiter.allow("old")
    for peer in ("a", "b", "c"):
        limiter.allow(peer)
    assert len(limiter) == 3
    assert limiter.allow("old")  # forgotten, so a fresh bucket: the price of a bound


def test_connection_caps_per_peer_and_in_total() -> None:
    limiter = ConnectionLimiter(per_peer=2, total=3)
    assert limiter.acquire("a") and limiter.acquire("a") and not limiter.acquire("a")
    assert limiter.acquire("b") and not limiter.acquire("c")  # the total cap
    assert limiter.open == 3 and limiter.count("a") == 2
    limiter.release("a")
    assert limiter.acquire("c") and limiter.open == 3
    with pytest.raises(TooManyConnections, match="too many connections from d"), limiter.hold("d"):
        pass
    for peer in ("a", "b", "c"):
        limiter.release(peer)
    with limiter.hold("d"):
        assert limiter.count("d") == 1
    assert limiter.open == 0 and limiter.count("d") == 0


@pytest.mark.parametrize("bad", [{"burst": 0, "per_minute": 1}, {"burst": 1, "per_minute": 0}])
def test_bad_rate_limits_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        PeerRateLimiter(**bad)


class _Transport(asyncio.BaseTransport):
    def __init__(self, extra: dict[str, Any]) -> None:
        super().__init__(extra)


def test_peer_address_and_key_come_from_the_transport() -> None:
    key = bytes(range(32))
    t = _Transport({"peername": ("200:1::2%tun0", 25, 0, 0), "peer_key": key})
    assert peer_address(t) == ipaddress.IPv6Address("200:1::2")
    assert peer_key(t) == key
    assert peer_address(_Transport({"peername": ("127.0.0.1", 25)})) is None
    assert peer_address(_Transport({})) is None
    assert peer_key(_Transport({"peer_key": "not bytes"})) is None
