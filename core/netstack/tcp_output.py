"""The sending half of :class:`core.netstack.tcp.TcpConnection`: new data under the
congestion and flow-control windows, retransmission of the first unacknowledged
segment, SACK-based loss recovery (RFC 6675) and the persist timer.

A mixin over the connection's state, kept in its own module so each file stays
readable; it never changes state outside the send side.
"""

from __future__ import annotations

from core.netstack.tcp_cc import NewReno, RtoEstimator
from core.netstack.tcp_sack import SackScoreboard
from core.netstack.tcp_wire import ACK, FIN, PSH, TcpOptions, TcpSegment

__all__ = ["SendPath", "signed32"]

_M32 = 0xFFFFFFFF


def signed32(x: int) -> int:
    """A 32-bit sequence-number difference as a signed int."""
    return x - (1 << 32) if x & 0x80000000 else x


class SendPath:
    # Send-side state, owned and initialised by TcpConnection.
    _iss: int
    _snd_una: int
    _snd_nxt: int
    _snd_max: int
    _snd_wnd: int
    _max_snd_wnd: int
    _sndbuf: bytearray
    _sndbuf_seq: int
    _fin_seq: int | None
    _mss: int
    _sack_ok: bool
    _sacked: SackScoreboard
    _rtx_next: int
    _rtx_at: float | None
    _persist_at: float | None
    _rtt_seq: int | None
    _rtt_time: float
    _rto: RtoEstimator
    _cc: NewReno
    fast_retransmits: int

    def _segment(self, flags: int, seq: int, payload: bytes = b"") -> TcpSegment:
        raise NotImplementedError  # TcpConnection builds segments

    def _retransmit_first(self, out: list[TcpSegment]) -> None:
        start = self._snd_una
        # Never beyond what was sent: new data must pass the window checks of _send_new.
        data_end = min(self._sndbuf_seq + len(self._sndbuf), self._snd_max)
        n = min(self._mss, data_end - start)
        if n <= 0:
            if self._fin_seq is not None and start == self._fin_seq < self._snd_max:
                out.append(self._segment(FIN | ACK, start))
            return
        off = start - self._sndbuf_seq
        flags = ACK
        if start + n == self._fin_seq and self._fin_seq < self._snd_max:  # FIN was sent
            flags |= FIN
        out.append(self._segment(flags, start, self._send_slice(off, n)))

    def _send_new(self, out: list[TcpSegment], now: float) -> None:
        data_end = self._sndbuf_seq + len(self._sndbuf)
        fin_seq = self._fin_seq
        sack_recovery = self._cc.in_recovery and bool(self._sacked)
        cc_budget = self._cc.cwnd - (self._pipe() if sack_recovery else 0)
        while True:
            nxt = self._snd_nxt
            avail = data_end - nxt
            if avail <= 0:
                if fin_seq is not None and nxt == fin_seq:
                    out.append(self._segment(FIN | ACK, nxt))
                    self._sent(nxt, 1, now)
                break
            flight = nxt - self._snd_una
            cc_room = (
                cc_budget if sack_recovery else self._cc.cwnd + self._cc.limited_transmit - flight
            )
            n = min(self._mss, avail, cc_room, self._snd_wnd - flight)
            if n <= 0:
                break
            if n < avail and n < self._mss and n < self._max_snd_wnd // 2:
                break  # sender SWS avoidance (RFC 9293 3.8.6.2.1)
            flags = ACK | PSH if n == avail else ACK
            if fin_seq is not None and nxt + n == fin_seq:
                flags |= FIN
            off = nxt - self._sndbuf_seq
            out.append(self._segment(flags, nxt, self._send_slice(off, n)))
            self._sent(nxt, n + (1 if flags & FIN else 0), now)
            cc_budget -= n

    # ------------------------------------------------------------------ SACK (RFC 6675)
    def _update_scoreboard(self, options: TcpOptions) -> bool:
        """Merge the peer's SACK blocks; True if they told us something new."""
        if not self._sack_ok:
            return False
        una, base = self._snd_una, self._iss + self._snd_una
        blocks = [
            (una + signed32((wl - base) & _M32), una + signed32((wr - base) & _M32))
            for wl, wr in options.sack_blocks
        ]
        return self._sacked.update(blocks, una, self._snd_max)

    def _pipe(self) -> int:
        return self._sacked.pipe(self._snd_una, self._snd_max, self._rtx_next)

    def _sack_recover(self, out: list[TcpSegment], now: float) -> None:
        pipe = self._pipe()
        data_end = min(self._sndbuf_seq + len(self._sndbuf), self._snd_max)
        for start, end in self._sacked.holes(max(self._rtx_next, self._snd_una)):
            while start < end and pipe < self._cc.cwnd:
                n = min(self._mss, end - start, data_end - start)
                if n <= 0:
                    return
                flags = ACK
                if start + n == self._fin_seq and self._fin_seq < self._snd_max:
                    flags |= FIN
                off = start - self._sndbuf_seq
                out.append(self._segment(flags, start, self._send_slice(off, n)))
                self.fast_retransmits += 1
                start += n
                self._rtx_next = start
                pipe += n
            if pipe >= self._cc.cwnd:
                return
        if self._rtx_at is None:
            self._rtx_at = now + self._rto.rto

    def _send_slice(self, off: int, n: int) -> bytes:
        """``n`` bytes of the send buffer from ``off``, copied once."""
        with memoryview(self._sndbuf) as view:
            return bytes(view[off : off + n])

    def _sent(self, seq: int, length: int, now: float) -> None:
        end = seq + length
        if seq >= self._snd_max and self._rtt_seq is None:
            self._rtt_seq, self._rtt_time = end, now
        self._snd_nxt = end
        if end > self._snd_max:
            self._snd_max = end
        if self._rtx_at is None:
            self._rtx_at = now + self._rto.rto

    def _arm_persist(self, now: float) -> None:
        # Window-blocked with nothing in flight: no ACK will come by itself, so probe
        # (zero window, or a window too small to send under sender SWS avoidance).
        unsent = self._sndbuf_seq + len(self._sndbuf) > self._snd_nxt
        if unsent and self._snd_max == self._snd_una:
            if self._persist_at is None:
                self._persist_at = now + self._rto.rto
        else:
            self._persist_at = None
