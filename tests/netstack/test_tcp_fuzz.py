"""Hypothesis drives two sans-IO connections through random schedules: writes, reads,
half-closes, and a network that drops, duplicates, reorders and delays segments while
time jumps.  Afterwards the network turns perfect; each side must have received
exactly the bytes the other sent, in order, with EOF after a shutdown."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.netstack.tcp import TcpConfig, TcpConnection, TcpState
from core.netstack.tcp_wire import TcpSegment

CFG = TcpConfig(mss=500, send_buffer=8000, receive_buffer=3000, delayed_ack=0.04, time_wait=5.0)
# a window scale of 2 (300 kB buffers), where rounding the window field matters
CFG_SCALED = TcpConfig(mss=1400, send_buffer=20000, receive_buffer=300_000, time_wait=5.0)

_net = st.tuples(st.just("net"), st.booleans(), st.integers(0, 2**32 - 1))
op = st.one_of(
    st.tuples(st.just("send"), st.booleans(), st.integers(1, 5000)),
    st.tuples(st.just("read"), st.booleans(), st.integers(-1, 4000)),
    st.tuples(st.just("shutdown"), st.booleans(), st.just(0)),
    _net,
    _net,
    _net,
    st.tuples(st.just("time"), st.booleans(), st.integers(1, 3000)),
    st.tuples(st.sampled_from(["close", "abort"]), st.booleans(), st.just(0)),
)


class World:
    def __init__(self, seed: int, cfg: TcpConfig = CFG) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self.a = TcpConnection.open(cfg, 1111, 2222, seed & 0xFFFFFFFF, self.now)
        syn = self.a.segments_to_send(self.now)[0]
        self.b = TcpConnection.accept(cfg, syn, (seed * 7919) & 0xFFFFFFFF, self.now)
        self.wire: list[tuple[TcpConnection, TcpSegment]] = []
        self.sent = {id(self.a): bytearray(), id(self.b): bytearray()}
        self.got = {id(self.a): bytearray(), id(self.b): bytearray()}
        self.counter = 0
        for _ in range(3):  # a clean handshake; the mayhem starts once established
            self.pump()
            while self.wire:
                dst, seg = self.wire.pop(0)
                dst.receive_segment(seg, self.now)
        assert self.a.state is self.b.state is TcpState.ESTABLISHED

    def pump(self) -> None:
        for src, dst in ((self.a, self.b), (self.b, self.a)):
            for seg in src.segments_to_send(self.now):
                self.wire.append((dst, seg))

    def net(self, r: int, lossy: bool) -> None:
        self.pump()
        if not self.wire:
            return
        i = r % len(self.wire) if lossy else 0
        dst, seg = self.wire.pop(i)
        fate = (r >> 8) % 10 if lossy else 9
        if fate == 0:
            return  # dropped
        if fate == 1:
            self.wire.append((dst, seg))  # duplicated
        dst.receive_segment(seg, self.now)

    def advance(self, ms: int) -> None:
        self.now += ms / 1000
        for conn in (self.a, self.b):
            deadline = conn.next_deadline()
            if deadline is not None and deadline <= self.now:
                conn.on_timer(self.now)

    def read(self, conn: TcpConnection, n: int) -> None:
        self.got[id(conn)] += conn.read(n)

    def send(self, conn: TcpConnection, n: int) -> None:
        if conn.state not in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
            return
        if conn._fin_seq is not None:
            return
        self.counter += 1
        data = bytes((self.counter + i) & 0xFF for i in range(n))
        taken = conn.send(data)
        self.sent[id(conn)] += data[:taken]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, 2**31),
    st.lists(op, min_size=20, max_size=200),
    st.booleans(),
    st.sampled_from([CFG, CFG_SCALED]),
)
def test_random_schedules_deliver_exactly_what_was_sent(
    seed: int,
    ops: list,  # type: ignore[type-arg]
    endings: bool,
    cfg: TcpConfig,
) -> None:
    w = World(seed, cfg)
    shut = {id(w.a): False, id(w.b): False}
    closed: set[int] = set()
    for name, side, arg in ops:
        conn = w.a if side else w.b
        if name == "send":
            w.send(conn, arg)
        elif name == "read":
            w.read(conn, arg)
        elif name == "shutdown":
            if conn.state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
                conn.shutdown()
                shut[id(conn)] = True
        elif name == "net":
            w.net(arg, lossy=True)
        elif name == "close":
            if endings:
                conn.close()  # later input is discarded
                closed.add(id(conn))
        elif name == "abort":
            if endings and ops.index((name, side, arg)) % 4 == 0:  # rarely: ends it all
                conn.abort()
                closed.add(id(conn))
        else:
            w.advance(arg)
    # the network heals: deliver everything in order, let timers run, keep reading
    for _ in range(20_000):
        w.pump()
        if w.wire:
            w.net(0, lossy=False)
            continue
        w.read(w.a, -1)
        w.read(w.b, -1)
        if all(conn.send_buffered == 0 for conn in (w.a, w.b)) and not w.wire:
            deadlines = [d for d in (w.a.next_deadline(), w.b.next_deadline()) if d]
            if not deadlines or min(deadlines) - w.now > 1.0:
                break
        w.advance(50)
    w.read(w.a, -1)
    w.read(w.b, -1)
    for src, dst in ((w.a, w.b), (w.b, w.a)):
        sent, got = bytes(w.sent[id(src)]), bytes(w.got[id(dst)])
        if closed or TcpState.CLOSED in (src.state, dst.state):
            # closed, aborted or timed out: what arrived is still an exact prefix
            assert sent.startswith(got)
        else:
            assert got == sent
