"""EmbeddedYggdrasil's upper layers over the in-memory network stand-in."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import AsyncIterator

import pytest

from core.address import address_for_key, partial_key_for_address, subnet_for_key
from core.embedded import ipv6 as v6
from core.embedded.node import EmbeddedConfig, EmbeddedYggdrasil, bloom_transform
from core.embedded.proto import split_keys
from core.identity import Identity
from tests.embedded.e2_memnet import MemoryHub
from tests.lab.fixtures import poll


def udp_packet(src: bytes, dst: bytes, data: bytes, hop_limit: int = 64) -> bytes:
    """A UDP/IPv6 packet (checksum left zero: the layer under test does not look)."""
    body = (1234).to_bytes(2, "big") + (5678).to_bytes(2, "big")
    body += (8 + len(data)).to_bytes(2, "big") + b"\0\0" + data
    return bytes(v6.IPv6Header(0, 0, len(body), 17, hop_limit, src, dst)) + body


@pytest.fixture
async def trio() -> AsyncIterator[tuple[MemoryHub, list[EmbeddedYggdrasil]]]:
    hub = MemoryHub()
    nodes = [
        EmbeddedYggdrasil(Identity.generate().seed, EmbeddedConfig(mtu=1500),
                          network_factory=hub.factory)
        for _ in range(3)
    ]  # fmt: skip
    for node in nodes:
        await node.start()
    try:
        yield hub, nodes
    finally:
        for node in nodes:
            await node.close()


async def test_identity_properties() -> None:
    ident = Identity.generate()
    node = EmbeddedYggdrasil(ident.seed, network_factory=MemoryHub().factory)
    assert node.public_key == ident.public_key
    assert node.address == address_for_key(ident.public_key)
    assert node.subnet == subnet_for_key(ident.public_key)
    # Core.MTU: network MTU - 79 (session overhead) - 1 (type byte), capped at 65535.
    assert node.max_mtu == 65535 and node.mtu == 65535
    assert bloom_transform(ident.public_key) == partial_key_for_address(
        ipaddress.IPv6Address(subnet_for_key(ident.public_key).network_address.packed[:8]
                              .replace(b"\x03", b"\x02", 1) + bytes(8))
    )  # fmt: skip


async def test_ping_between_embedded_nodes(trio: tuple[MemoryHub, list[EmbeddedYggdrasil]]) -> None:
    hub, (a, b, _) = trio
    rtts = await a.ping(b.address, count=3, interval=0.01, timeout=2)
    assert all(r is not None and r >= 0 for r in rtts)
    # The lookup was for the partial key of b's address; b's full key was learned.
    assert partial_key_for_address(b.address) in hub.lookups
    assert a.key_for_address(b.address) == b.public_key
    assert b.key_for_address(a.address) == a.public_key
    assert b.key_for_address(str(a.subnet.network_address + 5)) == a.public_key
    assert {s.key for s in a.sessions()} == {b.public_key}
    lost = await a.ping("200::1", count=1, timeout=0.2)
    assert lost == [None]
    with pytest.raises(ValueError, match="200::/7"):
        await a.ping("fd00::1", count=1)


async def test_ipv6_delivery_and_source_authentication(
    trio: tuple[MemoryHub, list[EmbeddedYggdrasil]],
) -> None:
    _hub, (a, b, c) = trio
    got: list[bytes] = []
    b.set_ipv6_handler(got.append)
    a.send_ipv6(udp_packet(a.address.packed, b.address.packed, b"from a"))
    await poll(lambda: len(got) == 1, 5)  # key now known: no more buffering
    sub = (a.subnet.network_address + 7).packed
    a.send_ipv6(udp_packet(sub, b.address.packed, b"from a's subnet"))
    await poll(lambda: len(got) == 2, 5)
    assert got[0].endswith(b"from a") and got[1].endswith(b"from a's subnet")
    # to b's subnet, too
    a.send_ipv6(udp_packet(a.address.packed, (b.subnet.network_address + 9).packed, b"sub"))
    await poll(lambda: len(got) == 3, 5)
    # c claims to be a: its session key is c's, so b drops it (as ipv6rwc readPC does).
    c.send_ipv6(udp_packet(c.address.packed, b.address.packed, b"honest c"))
    await poll(lambda: any(p.endswith(b"honest c") for p in got), 5)  # session is up
    before = b.ipv6.dropped
    forged = udp_packet(a.address.packed, b.address.packed, b"spoofed")
    c._send_session(b.public_key, bytes([v6.TYPE_SESSION_TRAFFIC]) + forged)
    c.send_ipv6(udp_packet(c.address.packed, b.address.packed, b"honest again"))
    await poll(lambda: any(p.endswith(b"honest again") for p in got), 5)
    assert not any(p.endswith(b"spoofed") for p in got)
    assert b.ipv6.dropped == before + 1
    # Our own stack cannot send with a foreign source or to a non-mesh destination.
    with pytest.raises(ValueError, match="source"):
        a.send_ipv6(forged.replace(a.address.packed, c.address.packed, 1))
    with pytest.raises(ValueError, match="200::/7"):
        a.send_ipv6(udp_packet(a.address.packed, ipaddress.IPv6Address("fd00::1").packed, b""))
    with pytest.raises(ValueError, match="IPv6"):
        a.send_ipv6(b"\x45" + bytes(60))
    # Not for b: dropped too.
    c._send_session(
        b.public_key,
        bytes([v6.TYPE_SESSION_TRAFFIC]) + udp_packet(c.address.packed, a.address.packed, b"x"),
    )
    await poll(lambda: b.ipv6.dropped == before + 2, 5)


async def test_packet_too_big_both_ways(trio: tuple[MemoryHub, list[EmbeddedYggdrasil]]) -> None:
    _hub, (a, b, _) = trio
    a_got: list[bytes] = []
    a.set_ipv6_handler(a_got.append)
    # Outgoing above our MTU (1500): a PTB comes back to our own stack, nothing is sent.
    big = udp_packet(a.address.packed, b.address.packed, bytes(1600))
    a.send_ipv6(big)
    ptb = a_got.pop()
    header = v6.IPv6Header.parse(ptb)
    assert (header.src, header.dst, header.next_header) == (b.address.packed,
                                                           a.address.packed, v6.ICMPV6)  # fmt: skip
    assert ptb[40] == v6.ICMPV6_PACKET_TOO_BIG and int.from_bytes(ptb[44:48], "big") == 1500
    assert ptb[48:] == big[: v6.PTB_QUOTE]
    assert v6.icmpv6_checksum(header.src, header.dst, ptb[40:]) == 0
    with pytest.raises(ValueError, match="source"):
        a.send_ipv6(udp_packet(b.address.packed, b.address.packed, bytes(1600)))
    assert not a_got
    # Incoming above b's MTU: b answers with a PTB to the sender, as readPC does.
    b.ipv6.set_mtu(1280)
    a.send_ipv6(udp_packet(a.address.packed, b.address.packed, bytes(1400)))
    await poll(lambda: bool(a_got), 5)
    answer = a_got.pop()
    assert answer[40] == v6.ICMPV6_PACKET_TOO_BIG and int.from_bytes(answer[44:48], "big") == 1280
    assert v6.IPv6Header.parse(answer).src == b.address.packed


async def test_proto_requests_between_nodes(
    trio: tuple[MemoryHub, list[EmbeddedYggdrasil]],
) -> None:
    _hub, (a, b, c) = trio
    info = await a.remote_nodeinfo(b.public_key)
    assert info["buildname"] == "meshsuite"
    self_info = json.loads(await a.request_remote("self", b.public_key))
    assert self_info == {"key": b.public_key.hex(), "routing_entries": "3"}
    peers = split_keys(await a.request_remote("peers", b.public_key))
    assert set(peers) == {a.public_key, c.public_key}
    tree = split_keys(await a.request_remote("tree", b.public_key))
    assert set(tree) == {a.public_key, b.public_key, c.public_key}
    with pytest.raises(TimeoutError):
        await a.request_remote("nodeinfo", Identity.generate().public_key, timeout=0.2)
    with pytest.raises(ValueError):
        await a.request_remote("bogus", b.public_key)


async def test_nodeinfo_privacy_and_custom_fields() -> None:
    hub = MemoryHub()
    quiet = EmbeddedYggdrasil(
        Identity.generate().seed,
        EmbeddedConfig(nodeinfo={"name": "q"}, nodeinfo_privacy=True),
        network_factory=hub.factory,
    )
    asker = EmbeddedYggdrasil(Identity.generate().seed, network_factory=hub.factory)
    async with quiet, asker:
        assert await asker.remote_nodeinfo(quiet.public_key) == {"name": "q"}


async def test_pending_packets_bounded_until_key_known() -> None:
    hub = MemoryHub()
    a = EmbeddedYggdrasil(Identity.generate().seed, network_factory=hub.factory)
    ghost = Identity.generate()  # nobody has this key: lookups go unanswered
    async with a:
        dst = address_for_key(ghost.public_key).packed
        for i in range(5):
            a.send_ipv6(udp_packet(a.address.packed, dst, b"%d" % i))
        assert a.ipv6.keys.pending(dst) == 1  # ipv6rwc keeps the latest only
        assert len(hub.lookups) == 5
        b = EmbeddedYggdrasil(ghost.seed, network_factory=hub.factory)
        got: list[bytes] = []
        b.set_ipv6_handler(got.append)
        async with b:
            a.send_ipv6(udp_packet(a.address.packed, dst, b"latest"))
            await poll(lambda: bool(got), 5)
            assert [p[48:] for p in got] == [b"latest"]


async def test_close_is_clean_and_ping_needs_start() -> None:
    node = EmbeddedYggdrasil(Identity.generate().seed, network_factory=MemoryHub().factory)
    with pytest.raises(RuntimeError, match="start"):
        await node.ping("200::1")
    await node.start()
    await node.close()
    await node.close()
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("embedded-")]


async def test_own_address_is_loopback() -> None:
    hub = MemoryHub()
    node = EmbeddedYggdrasil(Identity.generate().seed, network_factory=hub.factory)
    async with node:
        rtts = await node.ping(node.address, count=2, interval=0.01, timeout=2)
        assert all(r is not None for r in rtts)
        got: list[bytes] = []
        node.set_ipv6_handler(got.append)
        to_self = (node.subnet.network_address + 1).packed
        node.send_ipv6(udp_packet(node.address.packed, to_self, b"me"))
        await poll(lambda: bool(got), 2)
        assert got[0].endswith(b"me")
        assert hub.sent == 0 and hub.lookups == []  # nothing went to the mesh


async def test_key_datagrams_and_ipv6_share_the_traffic_type(
    trio: tuple[MemoryHub, list[EmbeddedYggdrasil]],
) -> None:
    """Raw session traffic (yggquic's) reaches the datagram handler with the session's key;
    IPv6 on the same session type still reaches the IPv6 handler; neither sees the other."""
    _, (a, b, _) = trio
    datagrams: list[tuple[bytes, bytes]] = []
    packets: list[bytes] = []
    b.set_datagram_handler(lambda key, data: datagrams.append((key, data)))
    b.set_ipv6_handler(packets.append)
    assert (await a.ping(b.address, count=1, timeout=10))[0] is not None  # session up
    quic_like = bytes([0x65]) + bytes(1300)  # a short header with the spin bit: 0x6?
    a.send_datagram(b.public_key, quic_like)
    a.send_ipv6(udp_packet(a.address.packed, b.address.packed, b"ipv6"))
    await poll(lambda: datagrams and packets, 10)
    assert datagrams == [(a.public_key, quic_like)]
    assert len(packets) == 1 and packets[0].endswith(b"ipv6")
    with pytest.raises(ValueError, match="exceeds"):
        a.send_datagram(b.public_key, bytes(a.datagram_mtu + 1))
    b.set_datagram_handler(None)  # without a handler: counted, dropped
    a.send_datagram(b.public_key, b"\x01more")
    await poll(lambda: b.datagrams_dropped == 1, 10)
    assert len(datagrams) == 1 and len(packets) == 1
    assert not v6.looks_like_ipv6(a.public_key, quic_like)
