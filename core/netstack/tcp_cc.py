"""Retransmission timer (RFC 6298) and NewReno congestion control (RFC 5681, RFC 6582),
with the SACK-based recovery variant of RFC 6675 when both ends negotiated SACK.

Both are plain objects with no clock of their own: the connection passes times and
byte counts in.  Kept apart from :mod:`core.netstack.tcp` so the state machine stays
readable and the algorithms can be tested alone.
"""

from __future__ import annotations

__all__ = ["NewReno", "RtoEstimator"]

_ALPHA = 1 / 8  # RFC 6298 section 2.3
_BETA = 1 / 4
_K = 4
_CLOCK_GRANULARITY = 0.001


class RtoEstimator:
    """Smoothed RTT and RTO per RFC 6298, with exponential backoff (section 5.5).

    ``min_rto`` defaults to Linux's 200 ms rather than RFC 6298's 1 s (section 2.4
    says SHOULD; every major stack uses less on fast paths).
    """

    def __init__(self, *, initial_rto: float = 1.0, min_rto: float = 0.2, max_rto: float = 60.0):
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.srtt: float | None = None
        self.rttvar = 0.0
        self._base_rto = initial_rto
        self.backoff = 0

    @property
    def rto(self) -> float:
        return float(min(self.max_rto, self._base_rto * (1 << self.backoff)))

    def sample(self, rtt: float) -> None:
        """A new RTT measurement (never from a retransmitted segment: Karn's rule)."""
        rtt = max(rtt, 0.0)
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = (1 - _BETA) * self.rttvar + _BETA * abs(self.srtt - rtt)
            self.srtt = (1 - _ALPHA) * self.srtt + _ALPHA * rtt
        base = self.srtt + max(_CLOCK_GRANULARITY, _K * self.rttvar)
        self._base_rto = min(self.max_rto, max(self.min_rto, base))
        self.backoff = 0

    def back_off(self) -> None:
        if self.rto < self.max_rto:
            self.backoff += 1

    def reset_backoff(self) -> None:
        self.backoff = 0


class NewReno:
    """Slow start, congestion avoidance, fast retransmit/recovery with NewReno partial
    acknowledgments (RFC 6582).  All quantities in bytes."""

    DUPACK_THRESHOLD = 3

    def __init__(self, mss: int):
        self.mss = mss
        # RFC 6928 initial window, min(10*MSS, max(2*MSS, 14600)).
        self.cwnd = min(10 * mss, max(2 * mss, 14600))
        self.ssthresh = 1 << 30
        self.dupacks = 0
        self.in_recovery = False
        self.recover = 0  # highest sequence sent when recovery started
        self._ca_acc = 0
        # With SACK (RFC 6675) the scoreboard drives retransmission: no window
        # inflation/deflation, cwnd = ssthresh during recovery.
        self.sack = False

    def set_mss(self, mss: int) -> None:
        self.mss = mss
        self.cwnd = min(10 * mss, max(2 * mss, 14600))

    def on_ack(self, acked: int, ack: int, flight_after: int) -> bool:
        """New data acknowledged.  Returns True if a partial ACK in recovery asks for
        the next unacknowledged segment to be retransmitted at once."""
        self.dupacks = 0
        if self.in_recovery:
            if ack >= self.recover:  # full acknowledgment: leave recovery (RFC 6582 3.2.3)
                self.in_recovery = False
                self.cwnd = max(min(self.ssthresh, flight_after + self.mss), 2 * self.mss)
                return False
            if self.sack:
                return False
            # partial ack: deflate by the amount acked, add back one MSS (3.2.5)
            self.cwnd = max(self.cwnd - acked + self.mss, self.mss)
            return True
        if self.cwnd < self.ssthresh:  # slow start with appropriate byte counting (RFC 3465)
            self.cwnd += min(acked, 2 * self.mss)
        else:
            self._ca_acc += acked
            if self._ca_acc >= self.cwnd:
                self._ca_acc -= self.cwnd
                self.cwnd += self.mss
        return False

    def on_dupack(self, flight: int, snd_max: int, threshold: int = DUPACK_THRESHOLD) -> bool:
        """A duplicate ACK. Returns True when fast retransmit should fire now.
        ``threshold`` may be lowered by the caller (RFC 5827 early retransmit, RFC 6675
        IsLost on SACKed bytes)."""
        if self.in_recovery:
            if not self.sack:
                self.cwnd += self.mss  # window inflation
            return False
        self.dupacks += 1
        if self.dupacks < threshold:
            return False
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd = self.ssthresh if self.sack else self.ssthresh + 3 * self.mss
        self.in_recovery = True
        self.recover = snd_max
        return True

    @property
    def limited_transmit(self) -> int:
        """Extra bytes allowed out on the first two duplicate ACKs (RFC 3042)."""
        return 0 if self.in_recovery else min(self.dupacks, 2) * self.mss

    def on_timeout(self, flight: int) -> None:
        """RTO expired (RFC 5681 section 3.1 equation 4; loss window of one MSS)."""
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd = self.mss
        self.dupacks = 0
        self.in_recovery = False
        self._ca_acc = 0
