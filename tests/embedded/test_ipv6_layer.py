"""ipv6rwc checks, ICMPv6 builders and the key store, sans-IO; decoders fuzzed."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.address import address_for_key, partial_key_for_address, subnet_for_key
from core.embedded import ipv6 as v6
from core.identity import Identity

ME = Identity.from_seed(bytes(32))
PEER = Identity.from_seed(bytes([1]) * 32)
ME_ADDR = address_for_key(ME.public_key).packed
PEER_ADDR = address_for_key(PEER.public_key).packed


class Recorder:
    def __init__(self) -> None:
        self.now = 0.0
        self.sent: list[tuple[bytes, bytes]] = []
        self.lookups: list[bytes] = []

    def layer(self, mtu: int = 1500) -> v6.IPv6Layer:
        return v6.IPv6Layer(
            ME.public_key,
            clock=lambda: self.now,
            send=lambda k, p: self.sent.append((k, p)),
            lookup=self.lookups.append,
            max_mtu=65535,
            mtu=mtu,
        )


def packet(src: bytes, dst: bytes, payload: bytes = b"data", nh: int = 17) -> bytes:
    return bytes(v6.IPv6Header(0, 0, len(payload), nh, 64, src, dst)) + payload


def test_header_round_trip() -> None:
    h = v6.IPv6Header(0xAB, 0x12345, 8, 58, 255, ME_ADDR, PEER_ADDR)
    raw = bytes(h)
    assert raw[:8] == bytes.fromhex("6ab1234500083aff")
    assert v6.IPv6Header.parse(raw) == h
    with pytest.raises(ValueError, match="shorter"):
        v6.IPv6Header.parse(raw[:39])
    with pytest.raises(ValueError, match="version 4"):
        v6.IPv6Header.parse(b"\x45" + raw[1:])


def test_echo_worked_example() -> None:
    # fe80::1 -> fe80::2 echo request id 0x1234 seq 1 "abcd": checksum by hand (RFC 1071).
    src = bytes.fromhex("fe800000000000000000000000000001")
    dst = bytes.fromhex("fe800000000000000000000000000002")
    pkt = v6.build_echo(src, dst, v6.ICMPV6_ECHO_REQUEST, 0x1234, 1, b"abcd")
    words = [0xFE80, 0x0001, 0xFE80, 0x0002, 0, 12, 0, 58, 0x8000, 0x1234, 0x0001, 0x6162,
             0x6364]  # fmt: skip
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert struct.unpack("!H", pkt[42:44])[0] == ~total & 0xFFFF
    assert pkt[:8] == bytes.fromhex("60000000000c3a40")
    echo = v6.parse_echo(pkt)
    assert echo is not None and (echo.ident, echo.seq, echo.data) == (0x1234, 1, b"abcd")
    broken = pkt[:-1] + b"e"
    assert v6.parse_echo(broken) is None  # bad checksum


def test_write_checks_source_and_buffers_until_key() -> None:
    rec = Recorder()
    layer = rec.layer()
    with pytest.raises(ValueError, match="source"):
        layer.write(packet(PEER_ADDR, PEER_ADDR))
    with pytest.raises(ValueError, match="200::/7"):
        layer.write(packet(ME_ADDR, bytes(16)))
    layer.write(packet(ME_ADDR, PEER_ADDR, b"1"))
    layer.write(packet(ME_ADDR, PEER_ADDR, b"2"))
    assert rec.sent == [] and rec.lookups == [partial_key_for_address(PEER_ADDR)] * 2
    subnet_dst = (subnet_for_key(PEER.public_key).network_address + 1).packed
    layer.write(packet(ME_ADDR, subnet_dst, b"3"))
    assert layer.keys.pending(PEER_ADDR) == 1 and layer.keys.pending(subnet_dst) == 1
    layer.keys.update(PEER.public_key)  # path_notify
    assert [(k, p[-1:]) for k, p in rec.sent] == [(PEER.public_key, b"2"),
                                                  (PEER.public_key, b"3")]  # fmt: skip
    assert all(p[0] == v6.TYPE_SESSION_TRAFFIC for _, p in rec.sent)
    layer.write(packet(ME_ADDR, PEER_ADDR, b"4"))
    assert rec.sent[-1][1][-1:] == b"4"


def test_a_known_destination_is_sent_without_computing_a_partial_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rec = Recorder()
    layer = rec.layer()
    layer.keys.update(PEER.public_key)
    computed: list[bytes] = []
    real = v6._partial_key
    monkeypatch.setattr(v6, "_partial_key", lambda raw: computed.append(raw) or real(raw))
    subnet_dst = (subnet_for_key(PEER.public_key).network_address + 1).packed
    for dst in (PEER_ADDR, subnet_dst):
        layer.write(packet(ME_ADDR, dst))
    assert len(rec.sent) == 2 and computed == []  # only a key-store miss needs it
    other = address_for_key(Identity.from_seed(bytes([2]) * 32).public_key).packed
    layer.write(packet(ME_ADDR, other))
    assert computed == [other] and rec.lookups == [partial_key_for_address(other)]


def test_read_checks() -> None:
    rec = Recorder()
    layer = rec.layer(mtu=1280)
    good = packet(PEER_ADDR, ME_ADDR)
    assert layer.read(PEER.public_key, good) == good
    assert layer.keys.key_for(PEER_ADDR) == PEER.public_key
    from_subnet = (subnet_for_key(PEER.public_key).network_address + 3).packed
    assert layer.read(PEER.public_key, packet(from_subnet, ME_ADDR)) is not None
    to_subnet = (subnet_for_key(ME.public_key).network_address + 3).packed
    assert layer.read(PEER.public_key, packet(PEER_ADDR, to_subnet)) is not None
    spoof = packet(address_for_key(Identity.generate().public_key).packed, ME_ADDR)
    assert layer.read(PEER.public_key, spoof) is None
    assert layer.read(PEER.public_key, packet(PEER_ADDR, PEER_ADDR)) is None
    assert layer.read(PEER.public_key, b"\x60" + bytes(10)) is None
    assert layer.dropped == 3
    big = packet(PEER_ADDR, ME_ADDR, bytes(1300))
    assert layer.read(PEER.public_key, big) is None
    key, ptb = rec.sent[-1]
    assert key == PEER.public_key and ptb[0] == v6.TYPE_SESSION_TRAFFIC
    assert ptb[1 + 40] == v6.ICMPV6_PACKET_TOO_BIG
    assert len(ptb) == 1 + 40 + 8 + v6.PTB_QUOTE


def test_key_store_expiry_and_bounds() -> None:
    rec = Recorder()
    store = v6.KeyStore(
        clock=lambda: rec.now,
        send=lambda k, p: rec.sent.append((k, p)),
        lookup=rec.lookups.append,
        max_keys=2,
        max_pending=2,
    )
    keys = [Identity.generate().public_key for _ in range(3)]
    for key in keys:
        store.update(key)
    assert store.key_for(address_for_key(keys[0]).packed) is None  # evicted, bound 2
    assert store.key_for(address_for_key(keys[2]).packed) == keys[2]
    rec.now += 121
    assert store.key_for(address_for_key(keys[2]).packed) is None  # keyStoreTimeout
    dests = [address_for_key(Identity.generate().public_key).packed for _ in range(3)]
    for dst in dests:
        store.send_to(dst, b"x")
    assert [store.pending(d) for d in dests] == [0, 1, 1]
    rec.now += 121
    store.expire()
    assert [store.pending(d) for d in dests] == [0, 0, 0]
    assert store.key_for(bytes(16)) is None


def test_set_mtu_clamps() -> None:
    layer = Recorder().layer()
    layer.set_mtu(100)
    assert layer.mtu == 1280
    layer.set_mtu(10**6)
    assert layer.mtu == 65535


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120))
def test_decoders_never_crash(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        v6.IPv6Header.parse(data)
    v6.parse_echo(data)
    rec = Recorder()
    layer = rec.layer()
    result = layer.read(PEER.public_key, data)
    assert result is None or result[24:40] == ME_ADDR
    with contextlib.suppress(ValueError):
        layer.write(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=80), st.booleans())
def test_read_garbage_after_valid_header(tail: bytes, from_peer: bool) -> None:
    rec = Recorder()
    layer = rec.layer()
    src = PEER_ADDR if from_peer else bytes(16)
    pkt = bytes(v6.IPv6Header(0, 0, len(tail), 58, 64, src, ME_ADDR)) + tail
    result = layer.read(PEER.public_key, pkt)
    assert (result is not None) == from_peer
