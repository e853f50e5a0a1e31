"""Two sans-IO session managers wired to each other (h11-style, no I/O, fake clock)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from core.embedded import crypto
from core.embedded.session import (
    SESSION_TRAFFIC_OVERHEAD,
    Deliver,
    ReplayWindow,
    SessionConfig,
    SessionInit,
    SessionManager,
    SessionType,
    Transmit,
    decode_uvarint,
    encode_uvarint,
)
from core.identity import Identity


@dataclass
class Clock:
    now: float = 1000.0
    wall: float = 1_700_000_000.0

    def mono(self) -> float:
        return self.now

    def unix(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall += seconds


@dataclass
class Pair:
    clock: Clock
    a_id: Identity
    b_id: Identity
    a: SessionManager
    b: SessionManager
    delivered: dict[str, list[bytes]] = field(default_factory=lambda: {"a": [], "b": []})
    wire: list[tuple[str, bytes]] = field(default_factory=list)

    def manager(self, name: str) -> SessionManager:
        return self.a if name == "a" else self.b

    def key(self, name: str) -> bytes:
        return (self.a_id if name == "a" else self.b_id).public_key

    def collect(self, name: str) -> list[bytes]:
        """Pull events from ``name``: deliveries recorded, transmissions returned."""
        out = []
        for event in self.manager(name).events():
            if isinstance(event, Deliver):
                self.delivered[name].append(event.data)
            else:
                assert isinstance(event, Transmit)
                out.append(event.data)
        return out

    def pump(self, limit: int = 50) -> None:
        """Deliver everything in flight until both sides are quiet."""
        for _ in range(limit):
            moved = False
            for src, dst in (("a", "b"), ("b", "a")):
                for data in self.collect(src):
                    self.wire.append((src, data))
                    self.manager(dst).handle_data(self.key(src), data)
                    moved = True
            if not moved:
                return
        raise AssertionError("sessions did not settle")


def make_pair(config: SessionConfig | None = None) -> Pair:
    clock = Clock()
    a_id, b_id = Identity.generate(), Identity.generate()
    kwargs = {"clock": clock.mono, "wallclock": clock.unix, "config": config}
    return Pair(
        clock,
        a_id,
        b_id,
        SessionManager(a_id.seed, **kwargs),  # type: ignore[arg-type]
        SessionManager(b_id.seed, **kwargs),  # type: ignore[arg-type]
    )


def test_init_ack_and_data_both_ways() -> None:
    p = make_pair()
    p.a.write_to(p.b_id.public_key, b"hello b")
    first = p.collect("a")
    assert len(first) == 1 and first[0][0] == SessionType.INIT and len(first[0]) == 193
    assert p.a.buffered(p.b_id.public_key) == 1
    p.b.handle_data(p.a_id.public_key, first[0])
    p.pump()
    assert p.delivered["b"] == [b"hello b"]
    kinds = [(src, data[0]) for src, data in p.wire]
    # b acks the init, a (new session from the ack) acks back, then a's buffered data.
    assert kinds[0] == ("b", SessionType.ACK)
    assert ("a", SessionType.TRAFFIC) in kinds
    p.b.write_to(p.a_id.public_key, b"hello a")
    p.pump()
    assert p.delivered["a"] == [b"hello a"]
    for i in range(20):
        p.a.write_to(p.b_id.public_key, b"a%d" % i)
        p.b.write_to(p.a_id.public_key, b"b%d" % i)
        p.pump()
    assert p.delivered["b"][1:] == [b"a%d" % i for i in range(20)]
    assert p.delivered["a"][1:] == [b"b%d" % i for i in range(20)]
    stats = {s.key: s for s in p.a.sessions()}
    assert stats[p.b_id.public_key].tx_bytes == len(b"hello b") + sum(
        len(b"a%d" % i) for i in range(20)
    )


def test_traffic_header_layout() -> None:
    p = make_pair()
    p.a.write_to(p.b_id.public_key, b"x")
    p.pump()
    # init, ack, ack back, then the buffered data under keySeq 1/1 with nonce 1.
    assert [(s, d[0], len(d)) for s, d in p.wire] == [
        ("a", 1, 193), ("b", 2, 193), ("a", 2, 193), ("a", 3, 4 + 16 + 32 + 1)
    ]  # fmt: skip
    assert p.wire[3][1][:4] == bytes.fromhex("03010101")
    p.wire.clear()
    p.b.write_to(p.a_id.public_key, b"payload")
    data = p.collect("b")[0]
    assert data[0] == SessionType.TRAFFIC
    local_seq, off = decode_uvarint(data, 1)
    remote_seq, off = decode_uvarint(data, off)
    nonce, off = decode_uvarint(data, off)
    # b advanced once for a's init (1) and ratcheted on a's first data (rotated was
    # zero), so its key sequence is 2; a's is 1; the ratchet reset b's send nonce.
    assert (local_seq, remote_seq, nonce) == (2, 1, 1)
    # box of (sender's next box pub | payload): 16 tag + 32 key + payload.
    assert len(data) - off == 16 + 32 + len(b"payload")
    assert len(data) <= SESSION_TRAFFIC_OVERHEAD + len(b"payload")


def test_ratchet_forward_after_rotation_interval() -> None:
    p = make_pair()
    p.a.write_to(p.b_id.public_key, b"x")
    p.pump()
    seqs = []
    for i in range(8):
        p.clock.advance(31)  # inside the session timeout; two steps pass the rotation limit
        p.a.write_to(p.b_id.public_key, b"ping%d" % i)
        p.pump()
        p.b.write_to(p.a_id.public_key, b"pong%d" % i)
        data = p.collect("b")[0]
        seqs.append(decode_uvarint(data, 1)[0])
        p.a.handle_data(p.b_id.public_key, data)
        p.pump()
    assert p.delivered["b"][1:] == [b"ping%d" % i for i in range(8)]
    assert p.delivered["a"] == [b"pong%d" % i for i in range(8)]
    # b's key sequence grows as the two sides ratchet, at most once a minute each.
    assert seqs == sorted(seqs) and seqs[-1] >= seqs[0] + 3
    assert len(p.a.sessions()) == 1 and len(p.b.sessions()) == 1


def test_replayed_packets_rejected() -> None:
    p = make_pair()
    p.a.write_to(p.b_id.public_key, b"x")
    p.pump()
    p.a.write_to(p.b_id.public_key, b"once")
    data = p.collect("a")[0]
    p.b.handle_data(p.a_id.public_key, data)
    p.b.handle_data(p.a_id.public_key, data)
    p.b.handle_data(p.a_id.public_key, data)
    assert [d for d in (e for e in p.b.events()) if isinstance(d, Deliver)] == [
        Deliver(p.a_id.public_key, b"once")
    ]


def test_out_of_order_within_window_accepted_outside_rejected() -> None:
    p = make_pair(SessionConfig(replay_window=8))
    p.a.write_to(p.b_id.public_key, b"x")
    p.pump()
    p.delivered["b"].clear()
    packets = []
    for i in range(12):
        p.a.write_to(p.b_id.public_key, b"%d" % i)
        packets.append(p.collect("a")[0])
    order = [3, 1, 2, 0, 11, 5, 3]  # 3 replayed; 0..2 late but inside; 5 is 6 behind 11
    for index in order:
        p.b.handle_data(p.a_id.public_key, packets[index])
    p.collect("b")
    assert p.delivered["b"] == [b"3", b"1", b"2", b"0", b"11", b"5"]
    p.b.handle_data(p.a_id.public_key, packets[2])  # 9 behind 11: outside the window of 8
    p.b.handle_data(p.a_id.public_key, packets[5])  # replay inside the window
    p.collect("b")
    assert p.delivered["b"][-1] == b"5" and len(p.delivered["b"]) == 6


def test_strict_upstream_rule_with_window_zero() -> None:
    p = make_pair(SessionConfig(replay_window=0))
    p.a.write_to(p.b_id.public_key, b"x")
    p.pump()
    p.delivered["b"].clear()
    packets = []
    for i in range(3):
        p.a.write_to(p.b_id.public_key, b"%d" % i)
        packets.append(p.collect("a")[0])
    for index in (1, 0, 2):
        p.b.handle_data(p.a_id.public_key, packets[index])
    p.collect("b")
    assert p.delivered["b"] == [b"1", b"2"]


def test_replay_window_unit() -> None:
    w = ReplayWindow(4)
    assert w.acceptable(1)
    w.commit(1)
    assert not w.acceptable(1)
    w.commit(10)
    assert not w.acceptable(1) and not w.acceptable(6)
    assert w.acceptable(7) and w.acceptable(9)
    w.commit(8)
    assert not w.acceptable(8) and w.acceptable(9)
    w.commit(2**64 - 1)
    assert not w.acceptable(9)


def test_buffers_are_bounded() -> None:
    p = make_pair(SessionConfig(buffer_packets=2, max_buffers=3))
    for i in range(5):
        p.a.write_to(p.b_id.public_key, b"%d" % i)
    assert p.a.buffered(p.b_id.public_key) == 2
    others = [Identity.generate().public_key for _ in range(4)]
    for key in others:
        p.a.write_to(key, b"x")
    assert p.a.buffered(p.b_id.public_key) == 0  # evicted: only 3 destinations kept
    assert [p.a.buffered(k) for k in others] == [0, 1, 1, 1]
    # Each write re-sends the same buffered init, as _bufferAndInit does.
    inits = [e for e in p.a.events() if isinstance(e, Transmit) and e.dest == others[-1]]
    assert len(inits) == 1


def test_buffer_delivered_latest_packets_once_acked() -> None:
    p = make_pair(SessionConfig(buffer_packets=2))
    for i in range(4):
        p.a.write_to(p.b_id.public_key, b"%d" % i)
    p.pump()
    assert p.delivered["b"] == [b"2", b"3"]


def test_buffer_and_session_expire() -> None:
    p = make_pair()
    p.a.write_to(p.b_id.public_key, b"x")
    p.collect("a")
    p.clock.advance(61)
    assert p.a.buffered(p.b_id.public_key) == 0
    p.a.write_to(p.b_id.public_key, b"y")
    p.pump()
    assert p.delivered["b"] == [b"y"]
    assert p.a.has_session(p.b_id.public_key)
    p.clock.advance(61)
    p.a.expire()
    assert not p.a.has_session(p.b_id.public_key) and p.a.sessions() == []


def test_traffic_without_session_answers_with_throwaway_init() -> None:
    p = make_pair()
    p.a.write_to(p.b_id.public_key, b"x")
    p.pump()
    p.a.write_to(p.b_id.public_key, b"lost")
    data = p.collect("a")[0]
    fresh = SessionManager(p.b_id.seed, clock=p.clock.mono, wallclock=p.clock.unix)
    fresh.handle_data(p.a_id.public_key, data)
    (event,) = fresh.events()
    assert isinstance(event, Transmit) and event.data[0] == SessionType.INIT
    assert not fresh.has_session(p.a_id.public_key)


def test_peer_restart_heals() -> None:
    p = make_pair()
    p.a.write_to(p.b_id.public_key, b"x")
    p.pump()
    p.b = SessionManager(p.b_id.seed, clock=p.clock.mono, wallclock=p.clock.unix)
    p.clock.advance(2)  # a later init seq
    p.delivered["b"].clear()
    p.a.write_to(p.b_id.public_key, b"after restart")  # b answers with an init
    p.pump()
    for attempt in range(5):  # inits carry a seconds timestamp: heals as time passes
        p.clock.advance(1)
        p.a.write_to(p.b_id.public_key, b"again%d" % attempt)
        p.pump()
        if p.delivered["b"]:
            break
    assert p.delivered["b"] and p.delivered["b"][-1].startswith(b"again")


def test_forged_init_is_dropped() -> None:
    p = make_pair()
    mallory = Identity.generate()
    current, _ = crypto.new_box_keys()
    nxt, _ = crypto.new_box_keys()
    forged = SessionInit(current, nxt, 0, 1).encrypt(mallory.seed, p.b_id.public_key)
    p.b.handle_data(p.a_id.public_key, forged)  # claims to be a, signed by mallory
    assert p.b.events() == [] and not p.b.has_session(p.a_id.public_key)
    low_order = SessionInit(bytes(32), nxt, 0, 1).encrypt(p.a_id.seed, p.b_id.public_key)
    p.b.handle_data(p.a_id.public_key, low_order)
    assert p.b.events() == [] and not p.b.has_session(p.a_id.public_key)


def test_uvarint_matches_go() -> None:
    assert encode_uvarint(0) == b"\x00"
    assert encode_uvarint(300) == b"\xac\x02"
    assert encode_uvarint(2**64 - 1) == b"\xff" * 9 + b"\x01"
    assert decode_uvarint(b"\xff" * 9 + b"\x01", 0) == (2**64 - 1, 10)
    assert decode_uvarint(b"\x80\x00", 0) == (0, 2)  # Go accepts non-minimal forms
    for bad in (b"", b"\x80", b"\xff" * 9 + b"\x02", b"\xff" * 10 + b"\x01"):
        with pytest.raises(ValueError):
            decode_uvarint(bad, 0)
    with pytest.raises(ValueError):
        encode_uvarint(2**64)


def test_lost_ack_heals_on_the_next_write() -> None:
    p = make_pair()
    p.a.write_to(p.b_id.public_key, b"first")
    (init,) = p.collect("a")
    p.b.handle_data(p.a_id.public_key, init)
    (lost_ack,) = p.collect("b")
    assert lost_ack[0] == SessionType.ACK  # dropped in flight
    p.clock.advance(1)
    p.a.write_to(p.b_id.public_key, b"second")  # re-sent init, fresh timestamp
    (again,) = p.collect("a")
    p.b.handle_data(p.a_id.public_key, again)
    p.pump()
    assert p.delivered["b"] == [b"second"]  # the buffer keeps the latest packet
    opened = SessionInit.decrypt(
        crypto.ed25519_private_to_x25519(p.b_id.seed), p.a_id.public_key, again
    )
    first = SessionInit.decrypt(
        crypto.ed25519_private_to_x25519(p.b_id.seed), p.a_id.public_key, init
    )
    assert (opened.current, opened.next) == (first.current, first.next)
    assert opened.seq == first.seq + 1
