"""Sans-IO TCP connection (RFC 9293) — no sockets, no asyncio, no clock of its own.

Feed it segments and the time (:meth:`TcpConnection.receive_segment`,
:meth:`TcpConnection.on_timer`), give it application data (:meth:`send`,
:meth:`shutdown`, :meth:`close`, :meth:`abort`), then pull what it has to say:
segments for the wire (:meth:`segments_to_send`), events for the application
(:meth:`next_event`), received bytes (:meth:`read`) and the next time it wants to be
woken (:meth:`next_deadline`).

Every state change goes through :data:`TRANSITIONS`, the one table of
``(state, event) -> state`` rules, and one method, ``_fire``.  Sequence numbers are
kept *relative* to the initial sequence numbers as unbounded Python ints (the SYN is
0, the first data byte 1) and converted to 32-bit wire values only at the edge, so the
arithmetic in between has no modular comparisons.

Implemented: three-way handshake (and simultaneous open), MSS and window scale
negotiation (RFC 7323), bounded send/receive buffers with flow control, receiver and
sender silly-window avoidance, delayed ACKs (RFC 1122 4.2.3.2, every second segment
or 40 ms), RTO per RFC 6298 with Karn's rule, fast retransmit and NewReno recovery
(RFC 5681, RFC 6582), zero-window probing, FIN/half-close, TIME-WAIT (and RFC 1337:
RSTs are ignored in it), RST validation (RFC 5961 section 3: in-window but not exact
gets a challenge ACK), keepalive (RFC 1122 4.2.3.6) and ISNs per RFC 6528.
"""

from __future__ import annotations

import collections
import errno
import logging
from dataclasses import replace

from core.netstack.tcp_cc import NewReno, RtoEstimator
from core.netstack.tcp_output import SendPath, signed32
from core.netstack.tcp_sack import ByteQueue, Reassembly, SackScoreboard
from core.netstack.tcp_state import (
    CAN_RECEIVE_DATA,
    CAN_SEND,
    MIN_MSS,
    SYNCHRONIZED,
    TRANSITIONS,
    Connected,
    ConnectionClosed,
    DataReceived,
    EofReceived,
    Event,
    LocalProtocolError,
    TcpConfig,
    TcpEvent,
    TcpState,
    isn_rfc6528,
)
from core.netstack.tcp_wire import (
    ACK,
    FIN,
    NO_OPTIONS,
    RST,
    SYN,
    TcpOptions,
    TcpSegment,
    reset_for,
)

__all__ = [
    "TRANSITIONS",
    "Connected",
    "ConnectionClosed",
    "DataReceived",
    "EofReceived",
    "Event",
    "LocalProtocolError",
    "TcpConfig",
    "TcpConnection",
    "TcpEvent",
    "TcpState",
    "isn_rfc6528",
    "reset_for",
]

log = logging.getLogger(__name__)

_M32 = 0xFFFFFFFF
IPV6_DEFAULT_MSS = 1220  # RFC 8200 minimum MTU 1280 - 60, used when the peer sends none
_MAX_DUPACKS_PER_FLUSH = 16
OOW_ACK_INTERVAL = 0.5


def _scale_for(buffer: int) -> int:
    shift = 0
    while (buffer >> shift) > 0xFFFF and shift < 14:
        shift += 1
    return shift


class TcpConnection(SendPath):
    """One TCP connection's state machine.  Create with :meth:`open` (active) or
    :meth:`accept` (from a received SYN)."""

    def __init__(self, config: TcpConfig, local_port: int, remote_port: int, iss: int, now: float):
        self.config = config
        self.local_port = local_port
        self.remote_port = remote_port
        self.state = TcpState.CLOSED
        self._now = now
        self._iss = iss & _M32
        self._irs = 0
        self._events: collections.deque[Event] = collections.deque()
        self._closed_emitted = False
        self._data_event_pending = False
        # send side (relative sequence numbers: SYN=0, first data byte=1)
        self._snd_una = 0
        self._snd_nxt = 0
        self._snd_max = 0
        self._snd_wnd = 0
        self._max_snd_wnd = 0
        self._snd_wl1 = 0
        self._snd_wl2 = 0
        self._snd_scale = 0
        self._sndbuf = bytearray()
        self._sndbuf_seq = 1
        self._fin_seq: int | None = None
        self._app_closed = False
        self._mss = min(config.mss, IPV6_DEFAULT_MSS)
        # receive side (relative to the peer's ISN)
        self._rcv_nxt = 0
        self._rcvbuf = ByteQueue()
        self._ooo = Reassembly()
        self._rcv_fin_seq: int | None = None
        self._eof_received = False
        self._our_scale = _scale_for(config.receive_buffer)
        self._rcv_scale = 0
        self._adv_edge = 0
        self._rcv_mss = 536
        self._scale_ok = False
        self._sack_ok = False
        self._dupacks_owed = 0
        self._last_oow_ack = -OOW_ACK_INTERVAL
        self._sacked = SackScoreboard()
        self._rtx_next = 0
        # ACK generation
        self._ack_now = False
        self._unacked_bytes = 0
        self._delack_at: float | None = None
        # timers and recovery
        self._rtx_at: float | None = None
        self._persist_at: float | None = None
        self._tw_at: float | None = None
        self._fw2_at: float | None = None
        self._retries = 0
        self._probe_pending = False
        self._last_recv = now
        self._ka_probes = 0
        self._rto = RtoEstimator(
            initial_rto=config.initial_rto, min_rto=config.min_rto, max_rto=config.max_rto
        )
        self._cc = NewReno(self._mss)
        self._rtt_seq: int | None = None
        self._rtt_time = 0.0
        self._fast_rtx = False
        self._pending_rst: TcpSegment | None = None
        self.timeouts = 0  # counters for logs, tests and benchmarks
        self.fast_retransmits = 0

    # ------------------------------------------------------------------ creation
    @classmethod
    def open(
        cls, config: TcpConfig, local_port: int, remote_port: int, iss: int, now: float
    ) -> TcpConnection:
        """Active open: the first :meth:`segments_to_send` returns the SYN."""
        conn = cls(config, local_port, remote_port, iss, now)
        conn._fire(TcpEvent.OPEN)
        return conn

    @classmethod
    def accept(cls, config: TcpConfig, syn: TcpSegment, iss: int, now: float) -> TcpConnection:
        """Passive open from a SYN received on a listening port."""
        if not syn.flags & SYN or syn.flags & (ACK | RST):
            raise ValueError("accept() needs a bare SYN segment")
        conn = cls(config, syn.dst_port, syn.src_port, iss, now)
        conn._irs = syn.seq
        conn._rcv_nxt = 1
        conn._peer_options(syn.options, offered_scale=syn.options.window_scale is not None)
        conn._snd_wnd = conn._max_snd_wnd = syn.window
        conn._fire(TcpEvent.SYN_IN)
        return conn

    # ------------------------------------------------------------------ state
    def _fire(self, event: TcpEvent) -> None:
        new = TRANSITIONS.get((self.state, event))
        if new is None:
            raise LocalProtocolError(f"no TCP transition from {self.state.value} on {event.value}")
        log.debug("tcp :%d->:%d %s -> %s (%s)", self.local_port, self.remote_port,
                  self.state.value, new.value, event.value)  # fmt: skip
        self.state = new
        if new is TcpState.ESTABLISHED:
            self._events.append(Connected())
        elif new is TcpState.FIN_WAIT_2 and self._app_closed:
            self._fw2_at = self._now + self.config.fin_wait_2_timeout
        elif new is TcpState.TIME_WAIT:
            self._tw_at = self._now + self.config.time_wait
            self._rtx_at = self._persist_at = self._fw2_at = None
            self._emit_closed(None, None)
        elif new is TcpState.CLOSED:
            self._rtx_at = self._persist_at = self._fw2_at = self._tw_at = None
            self._delack_at = None
            self._emit_closed(None, None)

    def _emit_closed(self, err: int | None, reason: str | None) -> None:
        if not self._closed_emitted:
            self._closed_emitted = True
            self._events.append(ConnectionClosed(err, reason))

    def _fail(self, event: TcpEvent, err: int, reason: str) -> None:
        self._emit_closed(err, reason)
        self._fire(event)

    # ------------------------------------------------------------------ application API
    @property
    def is_closed(self) -> bool:
        return self.state is TcpState.CLOSED

    @property
    def send_buffered(self) -> int:
        """Bytes given to :meth:`send` not yet acknowledged by the peer."""
        return len(self._sndbuf)

    @property
    def send_space(self) -> int:
        return max(0, self.config.send_buffer - len(self._sndbuf))

    @property
    def receive_buffered(self) -> int:
        return len(self._rcvbuf)

    @property
    def mss(self) -> int:
        """The effective send MSS after negotiation."""
        return self._mss

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Queue data; returns how many bytes fitted in the bounded send buffer."""
        if self._fin_seq is not None or self.state not in CAN_SEND:
            raise LocalProtocolError(f"cannot send in state {self.state.value} or after shutdown")
        n = min(len(data), self.send_space)
        if n:
            self._sndbuf += memoryview(data)[:n]
        return n

    def read(self, max_bytes: int = -1) -> bytes:
        """Take received in-order bytes; this reopens the receive window."""
        self._data_event_pending = False
        if not self._rcvbuf:
            return b""
        before = self._rcv_space()
        data = self._rcvbuf.take(max_bytes)
        self._maybe_window_update(before)
        return data

    def shutdown(self) -> None:
        """Half-close: send FIN after the queued data (idempotent)."""
        if self._fin_seq is not None or self.state not in CAN_SEND:
            return
        if self.state is TcpState.SYN_SENT:
            self._fire(TcpEvent.CLOSE)
            return
        self._fin_seq = self._sndbuf_seq + len(self._sndbuf)
        self._fire(TcpEvent.CLOSE)

    def close(self) -> None:
        """The application is done: FIN after queued data; later input is discarded."""
        self._app_closed = True
        self._rcvbuf.clear()
        self.shutdown()
        if self.state is TcpState.FIN_WAIT_2 and self._fw2_at is None:
            self._fw2_at = self._now + self.config.fin_wait_2_timeout

    def abort(self) -> None:
        """Drop the connection now and tell the peer with a RST."""
        if self.state is TcpState.CLOSED:
            return
        if self.state in SYNCHRONIZED or self.state is TcpState.SYN_RECEIVED:
            self._pending_rst = TcpSegment(
                self.local_port, self.remote_port, self._wire_seq(self._snd_nxt), 0, RST, 0
            )
        self._fire(TcpEvent.ABORT)

    def set_keepalive(
        self, idle: float | None, interval: float | None = None, count: int | None = None
    ) -> None:
        """Turn keepalive on (``idle`` seconds of silence before probing) or off
        (``None``) for this connection, like SO_KEEPALIVE/TCP_KEEPIDLE/TCP_KEEPINTVL/
        TCP_KEEPCNT on a kernel socket."""
        cfg = self.config
        self.config = replace(
            cfg,
            keepalive_idle=idle,
            keepalive_interval=cfg.keepalive_interval if interval is None else interval,
            keepalive_count=cfg.keepalive_count if count is None else count,
        )
        self._ka_probes = 0

    def path_mtu_changed(self, mss: int, wire_seq: int) -> bool:
        """An ICMPv6 Packet Too Big quoted our segment ``wire_seq``: send at most ``mss``
        from now on and resend what was dropped (RFC 8201 section 5.2).  Ignored unless
        the quoted sequence number is outstanding (RFC 5927 section 4.1) and the MSS
        actually shrinks.  Returns whether it applied."""
        rel = self._snd_una + signed32((wire_seq - self._iss - self._snd_una) & _M32)
        if not self._snd_una <= rel < self._snd_max or mss >= self._mss:
            return False
        self._mss = max(IPV6_DEFAULT_MSS, mss)
        self._cc.mss = self._mss
        self._snd_nxt = self._snd_una
        self._rtt_seq = None
        self._sacked.clear()
        return True

    # ------------------------------------------------------------------ helpers
    def _wire_seq(self, rel: int) -> int:
        return (self._iss + rel) & _M32

    def _wire_ack(self) -> int:
        return (self._irs + self._rcv_nxt) & _M32

    def _rcv_space(self) -> int:
        return max(0, self.config.receive_buffer - len(self._rcvbuf))

    def _window_field(self) -> int:
        space = self._rcv_space()
        edge = self._rcv_nxt + space
        # Receiver SWS avoidance (RFC 9293 3.8.6.2.2): move the edge only by big steps.
        step = min(self.config.receive_buffer // 2, self.config.mss)
        if edge - self._adv_edge < step and self._adv_edge >= self._rcv_nxt:
            edge = self._adv_edge
        wnd = min((edge - self._rcv_nxt) >> self._rcv_scale, 0xFFFF)
        self._adv_edge = max(self._adv_edge, self._rcv_nxt + (wnd << self._rcv_scale))
        return wnd

    def _maybe_window_update(self, space_before: int) -> None:
        advertised = self._adv_edge - self._rcv_nxt
        opened = self._rcv_space() - space_before
        if opened <= 0:
            return
        small = min(self.config.receive_buffer // 2, self.config.mss)
        if advertised < small or self._rcv_nxt + self._rcv_space() - self._adv_edge >= (
            self.config.receive_buffer // 2
        ):
            self._ack_now = True

    def _peer_options(self, opts: TcpOptions, *, offered_scale: bool) -> None:
        self._mss = max(MIN_MSS, min(opts.mss or IPV6_DEFAULT_MSS, self.config.mss))
        self._cc.set_mss(self._mss)
        self._sack_ok = opts.sack_permitted
        self._cc.sack = self._sack_ok
        self._scale_ok = offered_scale and opts.window_scale is not None
        if self._scale_ok and opts.window_scale is not None:
            self._snd_scale = opts.window_scale
            self._rcv_scale = self._our_scale
        else:
            self._snd_scale = self._rcv_scale = 0

    def _segment(self, flags: int, seq: int, payload: bytes = b"") -> TcpSegment:
        options = NO_OPTIONS
        if self._ooo and self._sack_ok:
            irs = self._irs
            blocks = self._ooo.sack_blocks()
            options = TcpOptions(
                sack_blocks=tuple(((irs + s) & _M32, (irs + e) & _M32) for s, e in blocks)
            )
        return TcpSegment(
            self.local_port,
            self.remote_port,
            self._wire_seq(seq),
            self._wire_ack(),
            flags,
            self._window_field(),
            payload,
            options,
        )

    # ------------------------------------------------------------------ input
    def receive_segment(self, seg: TcpSegment, now: float) -> None:
        """Process one segment addressed to this connection."""
        self._now = now
        if self.state is TcpState.CLOSED:
            return
        self._last_recv = now
        self._ka_probes = 0
        if self.state is TcpState.SYN_SENT:
            self._receive_in_syn_sent(seg, now)
            return
        seq = self._rcv_nxt + signed32((seg.seq - self._irs - self._rcv_nxt) & _M32)
        flags = seg.flags
        if flags & RST:
            self._receive_rst(seq)
            return
        if flags & SYN:
            if self.state is TcpState.SYN_RECEIVED and seq == 0:
                self._snd_nxt = 0  # our SYN-ACK was lost: send it again
            else:
                self._oow_ack()  # RFC 5961 section 4: challenge ACK
            return
        if not flags & ACK:
            return
        if not self._receive_ack(seg, seq, now):
            return
        if self.state is TcpState.TIME_WAIT:
            if flags & FIN:
                self._ack_now = True
                self._tw_at = now + self.config.time_wait
            return
        payload = seg.payload
        if payload:
            self._rcv_mss = max(self._rcv_mss, len(payload))
        if (payload or flags & FIN) and self.state in CAN_RECEIVE_DATA:
            self._receive_data(seq, payload, bool(flags & FIN))
        elif payload or flags & FIN:
            self._ack_now = True
        elif seq == self._rcv_nxt - 1:
            self._ack_now = True  # a keepalive or zero-window probe: always answered
        elif not self._rcv_nxt <= seq <= self._rcv_nxt + self._rcv_space():
            # Any other unacceptable empty segment is answered with an ACK (RFC 9293
            # 3.10.7.4), rate-limited.
            self._oow_ack()

    def _oow_ack(self) -> None:
        """ACK an out-of-window or otherwise invalid segment, at most once per
        ``OOW_ACK_INTERVAL``: two confused ends must not ACK each other's ACKs forever
        (RFC 5961 section 7; Linux's tcp_invalid_ratelimit)."""
        if self._now - self._last_oow_ack >= OOW_ACK_INTERVAL:
            self._last_oow_ack = self._now
            self._ack_now = True

    def _receive_in_syn_sent(self, seg: TcpSegment, now: float) -> None:
        flags = seg.flags
        if flags & ACK and seg.ack != self._wire_seq(1):
            if not flags & RST:
                self._pending_rst = TcpSegment(
                    self.local_port, self.remote_port, seg.ack, 0, RST, 0
                )
            return
        if flags & RST:
            if flags & ACK:
                self._fail(TcpEvent.RESET, errno.ECONNREFUSED, "connection refused by peer")
            return
        if not flags & SYN:
            return
        self._irs = seg.seq
        self._rcv_nxt = 1
        self._peer_options(seg.options, offered_scale=True)
        self._snd_wnd = self._max_snd_wnd = seg.window
        if flags & ACK:
            self._snd_una = 1
            self._snd_wl1, self._snd_wl2 = 0, 1
            if self._rtt_seq is not None:
                self._rto.sample(now - self._rtt_time)
                self._rtt_seq = None
            self._rtx_at = None
            self._retries = 0
            self._ack_now = True
            self._fire(TcpEvent.SYNACK_IN)
        else:
            self._snd_nxt = 0  # simultaneous open: resend our SYN as a SYN-ACK
            self._fire(TcpEvent.SYN_IN)

    def _receive_rst(self, seq: int) -> None:
        if self.state is TcpState.TIME_WAIT:
            return  # RFC 1337
        window = max(self._rcv_space(), 1)
        if seq == self._rcv_nxt:
            self._fail(TcpEvent.RESET, errno.ECONNRESET, "connection reset by peer")
        elif self._rcv_nxt <= seq < self._rcv_nxt + window:
            self._oow_ack()  # RFC 5961 section 3.2: challenge ACK

    def _receive_ack(self, seg: TcpSegment, seq: int, now: float) -> bool:
        """Process the ACK field. Returns False when the segment must be dropped."""
        ack = self._snd_una + signed32((seg.ack - self._iss - self._snd_una) & _M32)
        if self.state is TcpState.SYN_RECEIVED:
            if not 1 <= ack <= self._snd_max:
                self._pending_rst = TcpSegment(
                    self.local_port, self.remote_port, seg.ack, 0, RST, 0
                )
                return False
            self._snd_una = 1
            self._snd_wnd = seg.window << self._snd_scale
            self._max_snd_wnd = max(self._max_snd_wnd, self._snd_wnd)
            self._snd_wl1, self._snd_wl2 = seq, ack
            if self._rtt_seq is not None:
                self._rto.sample(now - self._rtt_time)
                self._rtt_seq = None
            self._rtx_at = None
            self._retries = 0
            self._fire(TcpEvent.ACK_OF_SYN)
            return True
        if ack > self._snd_max:
            self._oow_ack()  # acknowledges something we never sent
            return False
        if ack < self._snd_una:
            return True  # old duplicate ACK; the data may still be new
        wnd = seg.window << self._snd_scale
        new_sack = bool(seg.options.sack_blocks) and self._update_scoreboard(seg.options)
        is_dup = (
            ack == self._snd_una
            and self._snd_max > self._snd_una
            and (
                new_sack  # RFC 6675: an ACK with new SACK information counts, data or not
                or (not seg.payload and not seg.flags & (SYN | FIN) and wnd == self._snd_wnd)
            )
        )
        # RFC 9293's SND.WL1/WL2 rule, plus "the ACK advanced" (as Linux does): a window
        # is relative to its ACK, so an ACK that moves SND.UNA must bring its window.
        if (
            ack > self._snd_una
            or self._snd_wl1 < seq
            or (self._snd_wl1 == seq and self._snd_wl2 <= ack)
        ):
            self._snd_wnd = wnd
            self._max_snd_wnd = max(self._max_snd_wnd, wnd)
            self._snd_wl1, self._snd_wl2 = seq, ack
            if wnd:
                self._persist_at = None
        if ack > self._snd_una:
            self._new_ack(ack, now)
        elif is_dup and self._cc.on_dupack(
            self._snd_max - self._snd_una, self._snd_max, self._dupack_threshold()
        ):
            self._fast_rtx = True
            self._rtt_seq = None
            self._rtx_next = self._snd_una
        return self.state is not TcpState.CLOSED

    def _dupack_threshold(self) -> int:
        mss = self._mss
        if self._sacked.sacked_bytes > 2 * mss:
            return 1  # RFC 6675 IsLost: more than (DupThresh-1)*SMSS SACKed above una
        flight = self._snd_max - self._snd_una
        segments = -(-flight // mss)
        unsent = self._sndbuf_seq + len(self._sndbuf) > self._snd_max
        if segments < 4 and not unsent:
            return max(1, segments - 1)  # RFC 5827 early retransmit
        return 3

    def _new_ack(self, ack: int, now: float) -> None:
        acked = ack - self._snd_una
        data_end = self._sndbuf_seq + len(self._sndbuf)
        drop = min(ack, data_end) - self._sndbuf_seq
        if drop > 0:
            del self._sndbuf[:drop]
            self._sndbuf_seq += drop
        if self._rtt_seq is not None and ack >= self._rtt_seq:
            self._rto.sample(now - self._rtt_time)
            self._rtt_seq = None
        self._snd_una = ack
        if self._snd_nxt < ack:
            self._snd_nxt = ack
        if self._sacked:
            self._sacked.prune(ack)
            self._rtx_next = max(self._rtx_next, ack)
        if self._cc.on_ack(acked, ack, self._snd_max - ack):
            self._fast_rtx = True
        self._retries = 0
        self._rto.reset_backoff()
        self._rtx_at = None if ack == self._snd_max else now + self._rto.rto
        fin_acked = self._fin_seq is not None and ack > self._fin_seq
        if fin_acked and self.state in (
            TcpState.FIN_WAIT_1,
            TcpState.CLOSING,
            TcpState.LAST_ACK,
        ):
            self._fire(TcpEvent.ACK_OF_FIN)

    def _receive_data(self, seq: int, payload: bytes, fin: bool) -> None:
        if seq < self._rcv_nxt:  # trim what we already have
            cut = self._rcv_nxt - seq
            self._ack_now = True
            if cut > len(payload):
                return  # entirely old (a FIN at seq+len < rcv_nxt is a duplicate too)
            payload = payload[cut:]
            seq = self._rcv_nxt
        limit = self._rcv_nxt + self._rcv_space()
        if seq + len(payload) > limit:  # beyond the window: keep what fits
            payload = payload[: max(0, limit - seq)]
            fin = False
            self._ack_now = True
        if fin:
            self._rcv_fin_seq = seq + len(payload)
        if payload:
            if seq == self._rcv_nxt:
                self._append_in_order(payload)
            else:
                self._ooo.store(seq, payload, self._rcv_space())
                self._owe_dupack()
        if self._rcv_fin_seq == self._rcv_nxt and not self._eof_received:
            self._eof_received = True
            self._rcv_nxt += 1
            self._ack_now = True
            self._events.append(EofReceived())
            self._fire(TcpEvent.FIN_IN)

    def _owe_dupack(self) -> None:
        """Out of order: one immediate duplicate ACK per segment (RFC 5681 4.2), so the
        sender can count three of them and retransmit fast."""
        self._ack_now = True
        self._dupacks_owed = min(self._dupacks_owed + 1, _MAX_DUPACKS_PER_FLUSH)

    def _append_in_order(self, payload: bytes) -> None:
        self._rcvbuf.append(payload)
        self._rcv_nxt += len(payload)
        self._unacked_bytes += len(payload)
        if self._ooo:
            self._ack_now = True  # filling a hole: ACK at once
            self._rcv_nxt = self._ooo.drain(self._rcv_nxt, self._rcvbuf)
        if self._app_closed:
            self._rcvbuf.clear()
        elif not self._data_event_pending:
            self._data_event_pending = True
            self._events.append(DataReceived())

    # ------------------------------------------------------------------ output
    def segments_to_send(self, now: float) -> list[TcpSegment]:
        """Everything the connection wants on the wire now (possibly nothing)."""
        self._now = now
        out: list[TcpSegment] = []
        if self._pending_rst is not None:
            out.append(self._pending_rst)
            self._pending_rst = None
        state = self.state
        if state is TcpState.CLOSED:
            return out
        if state is TcpState.SYN_SENT or state is TcpState.SYN_RECEIVED:
            if self._snd_nxt == 0:
                out.append(self._syn_segment(now))
            return out
        if state is not TcpState.TIME_WAIT and self._snd_una > 0:
            if self._cc.in_recovery and self._sacked:
                self._fast_rtx = False
                self._sack_recover(out, now)
            elif self._fast_rtx:
                self._fast_rtx = False
                self.fast_retransmits += 1
                self._retransmit_first(out)
            self._send_new(out, now)
            self._arm_persist(now)
        if self._probe_pending:
            self._probe_pending = False
            out.append(self._segment(ACK, self._snd_una - 1))
        if self._dupacks_owed > 1:
            dup = self._segment(ACK, self._snd_nxt)
            out.extend([dup] * (self._dupacks_owed - 1))
        self._dupacks_owed = 0
        if out and out[-1].flags & ACK:
            self._acked()
        elif self._ack_now or self._unacked_bytes >= 2 * self._rcv_mss:
            out.append(self._segment(ACK, self._snd_nxt))
            self._acked()
        elif self._unacked_bytes and self._delack_at is None:
            self._delack_at = now + self.config.delayed_ack
        return out

    def _acked(self) -> None:
        self._ack_now = False
        self._unacked_bytes = 0
        self._delack_at = None

    def _syn_segment(self, now: float) -> TcpSegment:
        passive = self.state is TcpState.SYN_RECEIVED
        offer_scale = not passive or self._scale_ok
        opts = TcpOptions(
            mss=self.config.mss,
            window_scale=self._our_scale if offer_scale else None,
            sack_permitted=not passive or self._sack_ok,
        )
        self._snd_nxt = 1
        self._snd_max = max(self._snd_max, 1)
        if self._retries == 0:
            self._rtt_seq, self._rtt_time = 1, now
        self._rtx_at = now + self._rto.rto
        return TcpSegment(
            self.local_port,
            self.remote_port,
            self._wire_seq(0),
            self._wire_ack() if passive else 0,
            SYN | ACK if passive else SYN,
            min(self._rcv_space(), 0xFFFF),
            b"",
            opts,
        )

    # ------------------------------------------------------------------ timers
    def next_deadline(self) -> float | None:
        """The earliest time :meth:`on_timer` has work to do, or None."""
        times = [
            t
            for t in (self._rtx_at, self._delack_at, self._persist_at, self._tw_at, self._fw2_at)
            if t is not None
        ]
        ka = self._keepalive_at()
        if ka is not None:
            times.append(ka)
        return min(times) if times else None

    def _keepalive_at(self) -> float | None:
        idle = self.config.keepalive_idle
        if idle is None or self.state not in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
            return None
        return self._last_recv + idle + self._ka_probes * self.config.keepalive_interval

    def on_timer(self, now: float) -> None:
        """Run whatever timers have expired at ``now``."""
        self._now = now
        if self._tw_at is not None and now >= self._tw_at:
            self._tw_at = None
            self._fire(TcpEvent.TIMEOUT_2MSL)
            return
        if self._fw2_at is not None and now >= self._fw2_at:
            self._fw2_at = None
            if self.state is TcpState.FIN_WAIT_2:
                self._fail(TcpEvent.GIVE_UP, errno.ETIMEDOUT, "FIN-WAIT-2 timed out")
                return
        if self._delack_at is not None and now >= self._delack_at:
            self._delack_at = None
            self._ack_now = True
        if self._rtx_at is not None and now >= self._rtx_at:
            self._on_retransmit_timeout(now)
        if self._persist_at is not None and now >= self._persist_at:
            self._probe_pending = True
            self._rto.back_off()
            self._persist_at = now + self._rto.rto
        ka = self._keepalive_at()
        if ka is not None and now >= ka:
            if self._ka_probes >= self.config.keepalive_count:
                self._pending_rst = self._segment(RST, self._snd_nxt)
                self._fail(TcpEvent.GIVE_UP, errno.ETIMEDOUT, "keepalive timed out")
                return
            self._ka_probes += 1
            self._probe_pending = True

    def _on_retransmit_timeout(self, now: float) -> None:
        self._rtx_at = None
        self._retries += 1
        syn_state = self.state in (TcpState.SYN_SENT, TcpState.SYN_RECEIVED)
        limit = self.config.syn_retries if syn_state else self.config.max_retries
        if self._retries > limit:
            if not syn_state:
                self._pending_rst = self._segment(RST, self._snd_nxt)
            self._fail(TcpEvent.GIVE_UP, errno.ETIMEDOUT, "connection timed out")
            return
        self.timeouts += 1
        self._rto.back_off()
        self._rtt_seq = None  # Karn: never time a retransmission
        if syn_state:
            self._snd_nxt = 0
            return
        self._cc.on_timeout(self._snd_max - self._snd_una)
        self._fast_rtx = False
        self._sacked.clear()  # RFC 6675 section 5.1: the receiver may have reneged
        self._snd_nxt = self._snd_una  # go back N
        self._rtx_at = now + self._rto.rto

    def __repr__(self) -> str:
        return (
            f"<TcpConnection :{self.local_port}->:{self.remote_port} {self.state.value} "
            f"una={self._snd_una} nxt={self._snd_nxt} rcv={self._rcv_nxt} "
            f"cwnd={self._cc.cwnd} wnd={self._snd_wnd}>"
        )
