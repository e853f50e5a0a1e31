"""The sans-IO TCP state machine, driven synchronously: two connections wired to each
other by hand, a fake clock, segments dropped on purpose."""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest

from core.netstack.tcp import (
    TRANSITIONS,
    Connected,
    ConnectionClosed,
    DataReceived,
    EofReceived,
    Event,
    LocalProtocolError,
    TcpConfig,
    TcpConnection,
    TcpEvent,
    TcpState,
    isn_rfc6528,
    reset_for,
)
from core.netstack.tcp_wire import ACK, FIN, RST, SYN, TcpSegment

CFG = TcpConfig(mss=1000, send_buffer=64_000, receive_buffer=64_000)
Drop = Callable[[TcpSegment], bool]


class Pair:
    """Client ``a`` and server ``b`` with a shared fake clock."""

    def __init__(
        self,
        cfg: TcpConfig = CFG,
        iss_a: int = 1000,
        iss_b: int = 5000,
        cfg_b: TcpConfig | None = None,
    ):
        self.now = 0.0
        self.a = TcpConnection.open(cfg, 40000, 80, iss_a, self.now)
        syn = self.a.segments_to_send(self.now)
        assert len(syn) == 1 and syn[0].flags == SYN
        self.b = TcpConnection.accept(cfg_b or cfg, syn[0], iss_b, self.now)
        self.log: list[tuple[str, TcpSegment]] = []

    def step(self, drop: Drop | None = None) -> int:
        """Move every pending segment once in each direction; returns how many moved."""
        moved = 0
        for src, dst, name in ((self.a, self.b, "a>b"), (self.b, self.a, "b>a")):
            for seg in src.segments_to_send(self.now):
                self.log.append((name, seg))
                moved += 1
                if drop is None or not drop(seg):
                    dst.receive_segment(seg, self.now)
        return moved

    def run(self, drop: Drop | None = None, limit: int = 1000) -> None:
        for _ in range(limit):
            if not self.step(drop):
                return
        raise AssertionError("connections never went quiet")

    def advance(self, dt: float) -> None:
        self.now += dt
        for conn in (self.a, self.b):
            deadline = conn.next_deadline()
            if deadline is not None and deadline <= self.now:
                conn.on_timer(self.now)


def events(conn: TcpConnection) -> list[Event]:
    out = []
    while (ev := conn.next_event()) is not None:
        out.append(ev)
    return out


def established() -> Pair:
    p = Pair()
    p.run()
    assert p.a.state is p.b.state is TcpState.ESTABLISHED
    events(p.a), events(p.b)
    return p


def test_transition_table_is_complete_for_reset_and_abort() -> None:
    for state in TcpState:
        if state is not TcpState.CLOSED:
            for ev in (TcpEvent.RESET, TcpEvent.ABORT, TcpEvent.GIVE_UP):
                assert TRANSITIONS[(state, ev)] is TcpState.CLOSED
    reachable = {TcpState.CLOSED} | set(TRANSITIONS.values())
    assert reachable == set(TcpState)


def test_handshake_negotiates_mss_and_window_scale() -> None:
    p = Pair()
    p.run()
    syn = p.log[0][1] if p.log else None
    assert p.a.state is TcpState.ESTABLISHED and p.b.state is TcpState.ESTABLISHED
    assert events(p.a) == [Connected()] and events(p.b) == [Connected()]
    synack = p.log[0][1]
    assert synack.flags == SYN | ACK and synack.options.mss == 1000
    assert synack.options.window_scale == 0  # 64 kB needs no scaling
    assert p.a.mss == p.b.mss == 1000
    assert syn is not None


def test_window_scale_used_for_big_buffers() -> None:
    cfg = TcpConfig(mss=60000, receive_buffer=4 << 20)
    p = Pair(cfg)
    p.run()
    p.a.send(b"x" * 200_000)
    got = b""
    for _ in range(50):
        p.run()
        got += p.b.read()
        p.advance(CFG.delayed_ack)
    assert got == b"x" * 200_000
    window_fields = [s.window for name, s in p.log if name == "b>a" and not s.flags & SYN]
    synack = next(s for name, s in p.log if s.flags & SYN)
    assert synack.options.window_scale == 7  # 4 MiB >> 7 fits in 16 bits
    assert max(window_fields) <= 0xFFFF
    assert (max(window_fields) << 7) >= (4 << 20) - (1 << 7)


def test_delayed_ack_then_timer() -> None:
    p = established()
    p.a.send(b"hello")
    p.step()  # data a>b; b holds the ACK back
    assert not p.b.segments_to_send(p.now)
    deadline = p.b.next_deadline()
    assert deadline is not None and deadline == pytest.approx(CFG.delayed_ack)
    p.advance(CFG.delayed_ack)
    acks = p.b.segments_to_send(p.now)
    assert len(acks) == 1 and acks[0].flags == ACK and not acks[0].payload


def test_every_second_full_segment_is_acked_at_once() -> None:
    p = established()
    p.a.send(b"y" * 2000)
    for seg in p.a.segments_to_send(p.now):
        p.b.receive_segment(seg, p.now)
    acks = p.b.segments_to_send(p.now)
    assert [s.flags for s in acks] == [ACK]


def test_retransmission_timeout_with_backoff() -> None:
    p = established()
    p.a.send(b"lost")
    first = p.a.segments_to_send(p.now)
    assert first and first[0].payload == b"lost"  # dropped on the floor
    rto = p.a.next_deadline()
    assert rto is not None
    p.advance(rto - p.now)
    again = p.a.segments_to_send(p.now)
    assert [s.payload for s in again] == [b"lost"]
    second = p.a.next_deadline()
    assert second is not None and second - p.now == pytest.approx(2 * (rto - 0.0), rel=0.5)
    for seg in again:
        p.b.receive_segment(seg, p.now)
    p.run()
    assert p.b.read() == b"lost"


def test_fast_retransmit_on_three_duplicate_acks() -> None:
    p = established()
    p.a.send(bytes(range(256)) * 20)  # 5120 bytes: 6 segments
    segs = p.a.segments_to_send(p.now)
    assert len(segs) >= 5
    for seg in segs[1:]:
        p.b.receive_segment(seg, p.now)  # the first is lost
    dupacks = p.b.segments_to_send(p.now)
    assert len(dupacks) >= 3 and all(d.ack == segs[0].seq for d in dupacks)
    for d in dupacks:
        p.a.receive_segment(d, p.now)
    resent = p.a.segments_to_send(p.now)
    assert resent[0].seq == segs[0].seq and resent[0].payload == segs[0].payload
    for seg in resent:
        p.b.receive_segment(seg, p.now)
    p.run()
    assert p.b.read() == bytes(range(256)) * 20


def test_zero_window_probe_and_reopening() -> None:
    cfg = TcpConfig(mss=1000, send_buffer=64_000, receive_buffer=4000)
    p = Pair(cfg)
    p.run()
    assert p.a.send(b"z" * 10_000) == 10_000
    p.run()
    assert p.b.receive_buffered == 4000 and p.a.send_buffered == 6000
    deadline = p.a.next_deadline()
    assert deadline is not None  # the persist timer
    p.advance(deadline - p.now)
    probe = p.a.segments_to_send(p.now)
    assert probe and not probe[0].payload
    assert p.b.read() == b"z" * 4000  # reading opens the window; b says so at once
    p.run()
    got = p.b.read()
    p.run()
    got += p.b.read()
    p.run()
    got += p.b.read()
    assert got == b"z" * 6000


def test_half_close_both_ways_and_time_wait() -> None:
    p = established()
    p.a.send(b"request")
    p.a.shutdown()
    assert p.a.state is TcpState.FIN_WAIT_1
    p.run()
    assert p.b.state is TcpState.CLOSE_WAIT and p.a.state is TcpState.FIN_WAIT_2
    assert events(p.b) == [DataReceived(), EofReceived()]
    assert p.b.read() == b"request"
    p.b.send(b"response after their FIN")
    p.run()
    assert p.a.read() == b"response after their FIN"
    p.b.shutdown()
    p.run()
    assert p.b.state is TcpState.CLOSED and p.a.state is TcpState.TIME_WAIT
    assert events(p.b)[-1] == ConnectionClosed()
    assert events(p.a)[-2:] == [EofReceived(), ConnectionClosed()]
    p.advance(CFG.time_wait)
    assert p.a.state is TcpState.CLOSED


def test_simultaneous_close_goes_through_closing() -> None:
    p = established()
    p.a.shutdown()
    p.b.shutdown()
    fins = (p.a.segments_to_send(p.now), p.b.segments_to_send(p.now))
    for seg in fins[0]:
        p.b.receive_segment(seg, p.now)
    for seg in fins[1]:
        p.a.receive_segment(seg, p.now)
    assert p.a.state is p.b.state is TcpState.CLOSING
    p.run()
    assert p.a.state is p.b.state is TcpState.TIME_WAIT


def test_rst_validation() -> None:
    p = established()
    base = p.a.segments_to_send(p.now) or [p.a._segment(ACK, p.a._snd_nxt)]
    seq = base[0].seq
    far = TcpSegment(40000, 80, (seq + 10_000_000) & 0xFFFFFFFF, 0, RST, 0)
    p.b.receive_segment(far, p.now)
    assert p.b.state is TcpState.ESTABLISHED
    near = TcpSegment(40000, 80, (seq + 10) & 0xFFFFFFFF, 0, RST, 0)
    p.b.receive_segment(near, p.now)
    assert p.b.state is TcpState.ESTABLISHED
    assert [s.flags for s in p.b.segments_to_send(p.now)] == [ACK]  # challenge ACK
    exact = TcpSegment(40000, 80, seq, 0, RST, 0)
    p.b.receive_segment(exact, p.now)
    assert p.b.state is TcpState.CLOSED
    assert events(p.b) == [ConnectionClosed(errno.ECONNRESET, "connection reset by peer")]


def test_abort_sends_rst_and_peer_resets() -> None:
    p = established()
    p.a.abort()
    p.run()
    assert p.a.state is p.b.state is TcpState.CLOSED
    assert events(p.b)[-1].errno == errno.ECONNRESET  # type: ignore[union-attr]


def test_refused_and_syn_timeout() -> None:
    a = TcpConnection.open(CFG, 40000, 81, 7, 0.0)
    syn = a.segments_to_send(0.0)[0]
    rst = reset_for(syn)
    assert rst is not None and rst.flags == RST | ACK
    a.receive_segment(rst, 0.0)
    assert events(a) == [ConnectionClosed(errno.ECONNREFUSED, "connection refused by peer")]

    b = TcpConnection.open(CFG, 40001, 81, 7, 0.0)
    now, syns = 0.0, 0
    while not b.is_closed:
        syns += len(b.segments_to_send(now))
        deadline = b.next_deadline()
        assert deadline is not None
        now = deadline
        b.on_timer(now)
    assert syns == CFG.syn_retries + 1
    assert events(b) == [ConnectionClosed(errno.ETIMEDOUT, "connection timed out")]


def test_keepalive_gives_up_on_silent_peer() -> None:
    cfg = TcpConfig(mss=1000, keepalive_idle=10, keepalive_interval=1, keepalive_count=3)
    p = Pair(cfg)
    p.run()
    events(p.a)
    probes = 0
    while not p.a.is_closed:
        deadline = p.a.next_deadline()
        assert deadline is not None
        p.now = deadline
        p.a.on_timer(p.now)
        probes += sum(1 for s in p.a.segments_to_send(p.now) if not s.flags & RST)
    assert probes == 3
    assert events(p.a) == [ConnectionClosed(errno.ETIMEDOUT, "keepalive timed out")]


def test_keepalive_answered_keeps_connection() -> None:
    """Only ``a`` probes; ``b`` (no keepalive of its own) must answer each probe."""
    cfg = TcpConfig(mss=1000, keepalive_idle=10, keepalive_interval=1, keepalive_count=3)
    p = Pair(cfg, cfg_b=CFG)
    p.run()
    probes = 0
    for _ in range(20):
        p.advance(5)
        before = len(p.log)
        p.run()
        probes += sum(1 for name, _ in p.log[before:] if name == "a>b")
    assert p.a.state is TcpState.ESTABLISHED
    assert probes >= 5


def test_zero_length_probe_below_window_is_acked() -> None:
    p = established()
    ack = p.b.segments_to_send(p.now) or [p.b._segment(ACK, p.b._snd_nxt)]
    rcv_nxt = ack[0].ack
    probe = TcpSegment(40000, 80, (rcv_nxt - 1) & 0xFFFFFFFF, ack[0].seq, ACK, 1000)
    p.b.receive_segment(probe, p.now)
    reply = p.b.segments_to_send(p.now)
    assert [s.flags for s in reply] == [ACK] and reply[0].ack == rcv_nxt


def test_sequence_numbers_wrap() -> None:
    p = Pair(iss_a=0xFFFFFFFF - 1500, iss_b=0xFFFFFFFF - 10)
    p.run()
    data = bytes(range(256)) * 100
    p.a.send(data)
    p.b.send(data)
    p.run()
    assert p.b.read() == data and p.a.read() == data


def test_local_misuse_raises() -> None:
    p = established()
    p.a.shutdown()
    with pytest.raises(LocalProtocolError):
        p.a.send(b"late")
    with pytest.raises(ValueError, match="bare SYN"):
        TcpConnection.accept(CFG, TcpSegment(1, 2, 3, 4, SYN | ACK, 5), 0, 0.0)


def test_send_buffer_is_bounded() -> None:
    p = established()
    assert p.a.send(b"q" * 100_000) == CFG.send_buffer
    assert p.a.send(b"more") == 0


def test_isn_rfc6528() -> None:
    secret = b"k" * 16
    a, b = bytes(16), bytes(15) + b"\x01"
    assert isn_rfc6528(secret, a, 1, b, 2, 0.0) != isn_rfc6528(secret, a, 1, b, 3, 0.0)
    one_sec = isn_rfc6528(secret, a, 1, b, 2, 1.0) - isn_rfc6528(secret, a, 1, b, 2, 0.0)
    assert one_sec % (1 << 32) == 250_000


def test_lossy_bulk_transfer_in_lockstep() -> None:
    p = established()
    data = bytes(range(251)) * 800  # 200 kB
    sent = 0
    counter = iter(range(10**9))
    got = bytearray()

    def drop(seg: TcpSegment) -> bool:
        return next(counter) % 7 == 3

    for _ in range(5000):
        if sent < len(data):
            sent += p.a.send(data[sent : sent + 8192])
        p.step(drop)
        got += p.b.read()
        p.advance(0.05)
        if len(got) == len(data):
            break
    assert bytes(got) == data
    fins = [s for _, s in p.log if s.flags & FIN]
    assert not fins


def test_byte_queue_and_reassembly() -> None:
    from core.netstack.tcp_sack import ByteQueue, Reassembly, SackScoreboard

    q = ByteQueue()
    for chunk in (b"abc", b"", b"defg", b"h"):
        q.append(chunk)
    assert len(q) == 8
    assert q.take(2) == b"ab" and q.take(3) == b"cde" and len(q) == 3
    assert q.take() == b"fgh" and len(q) == 0 and q.take() == b""

    r = Reassembly()
    assert r.store(20, b"x" * 10, 100) and r.store(40, b"y" * 5, 100)
    assert not r.store(20, b"dup", 100) and not r.store(60, b"z" * 90, 100)
    assert r.sack_blocks() == [(40, 45), (20, 30)]  # most recent first
    out = ByteQueue()
    assert r.drain(10, out) == 10 and len(out) == 0  # gap before 20: nothing yet
    assert r.drain(25, out) == 30 and out.take() == b"x" * 5  # overlap trimmed
    assert r.sack_blocks() == [(40, 45)]

    sb = SackScoreboard()
    assert sb.update([(5, 10), (20, 30)], una=1, snd_max=40)
    assert not sb.update([(6, 9)], una=1, snd_max=40)  # nothing new
    assert not sb.update([(0, 3), (30, 50)], una=1, snd_max=40)  # outside: ignored
    assert sb.holes(1) == [(1, 5), (10, 20)] and sb.sacked_bytes == 15
    assert sb.pipe(una=1, snd_max=40, rtx_next=1) == 39 - 15 - 14
    sb.prune(12)
    assert sb.ranges == [(20, 30)] and sb.holes(12) == [(12, 20)]
