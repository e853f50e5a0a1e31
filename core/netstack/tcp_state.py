"""The data of the TCP state machine (RFC 9293 section 3.3.2): states, the events
that move between them, the one transition table, the application-facing events and
the per-connection configuration.  :mod:`core.netstack.tcp` holds the behaviour; every
state change it makes is a lookup in :data:`TRANSITIONS`.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

__all__ = [
    "CAN_RECEIVE_DATA",
    "CAN_SEND",
    "MIN_MSS",
    "SYNCHRONIZED",
    "TRANSITIONS",
    "Connected",
    "ConnectionClosed",
    "DataReceived",
    "EofReceived",
    "Event",
    "LocalProtocolError",
    "TcpConfig",
    "TcpEvent",
    "TcpState",
    "isn_rfc6528",
]

MIN_MSS = 64


class TcpState(enum.Enum):
    CLOSED = "CLOSED"
    SYN_SENT = "SYN-SENT"
    SYN_RECEIVED = "SYN-RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN-WAIT-1"
    FIN_WAIT_2 = "FIN-WAIT-2"
    CLOSE_WAIT = "CLOSE-WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST-ACK"
    TIME_WAIT = "TIME-WAIT"


class TcpEvent(enum.Enum):
    OPEN = "active open"
    SYN_IN = "SYN received"
    SYNACK_IN = "SYN-ACK received"
    ACK_OF_SYN = "our SYN acknowledged"
    CLOSE = "application shut down writing"
    FIN_IN = "FIN received in order"
    ACK_OF_FIN = "our FIN acknowledged"
    TIMEOUT_2MSL = "TIME-WAIT expired"
    RESET = "valid RST received"
    ABORT = "application aborted"
    GIVE_UP = "retransmissions/keepalives exhausted"


S, E = TcpState, TcpEvent
#: Every legal state change.  A pair that is not here is a bug in the caller.
TRANSITIONS: dict[tuple[TcpState, TcpEvent], TcpState] = {
    (S.CLOSED, E.OPEN): S.SYN_SENT,
    (S.CLOSED, E.SYN_IN): S.SYN_RECEIVED,
    (S.SYN_SENT, E.SYNACK_IN): S.ESTABLISHED,
    (S.SYN_SENT, E.SYN_IN): S.SYN_RECEIVED,  # simultaneous open
    (S.SYN_SENT, E.CLOSE): S.CLOSED,
    (S.SYN_RECEIVED, E.ACK_OF_SYN): S.ESTABLISHED,
    (S.SYN_RECEIVED, E.CLOSE): S.FIN_WAIT_1,
    (S.ESTABLISHED, E.CLOSE): S.FIN_WAIT_1,
    (S.ESTABLISHED, E.FIN_IN): S.CLOSE_WAIT,
    (S.FIN_WAIT_1, E.ACK_OF_FIN): S.FIN_WAIT_2,
    (S.FIN_WAIT_1, E.FIN_IN): S.CLOSING,
    (S.FIN_WAIT_2, E.FIN_IN): S.TIME_WAIT,
    (S.CLOSING, E.ACK_OF_FIN): S.TIME_WAIT,
    (S.CLOSE_WAIT, E.CLOSE): S.LAST_ACK,
    (S.LAST_ACK, E.ACK_OF_FIN): S.CLOSED,
    (S.TIME_WAIT, E.TIMEOUT_2MSL): S.CLOSED,
}
for _state in TcpState:
    if _state is not S.CLOSED:
        for _ev in (E.RESET, E.ABORT, E.GIVE_UP):
            TRANSITIONS.setdefault((_state, _ev), S.CLOSED)
del S, E

SYNCHRONIZED = frozenset(
    {
        TcpState.ESTABLISHED,
        TcpState.FIN_WAIT_1,
        TcpState.FIN_WAIT_2,
        TcpState.CLOSE_WAIT,
        TcpState.CLOSING,
        TcpState.LAST_ACK,
        TcpState.TIME_WAIT,
    }
)
CAN_SEND = frozenset(
    {TcpState.SYN_SENT, TcpState.SYN_RECEIVED, TcpState.ESTABLISHED, TcpState.CLOSE_WAIT}
)
CAN_RECEIVE_DATA = frozenset({TcpState.ESTABLISHED, TcpState.FIN_WAIT_1, TcpState.FIN_WAIT_2})


class LocalProtocolError(RuntimeError):
    """The application used the connection wrongly (e.g. send after shutdown)."""


@dataclass(frozen=True, slots=True)
class TcpConfig:
    """Per-connection tunables.  ``mss`` is what we advertise and the most we send; the
    stack derives it from the link MTU (MTU - 40 IPv6 - 20 TCP)."""

    mss: int = 65535 - 60
    send_buffer: int = 4 << 20
    receive_buffer: int = 4 << 20
    initial_rto: float = 1.0
    min_rto: float = 0.2
    max_rto: float = 60.0
    syn_retries: int = 6
    max_retries: int = 15
    delayed_ack: float = 0.04
    time_wait: float = 60.0  # 2*MSL with Linux's MSL of 30 s
    fin_wait_2_timeout: float = 60.0
    keepalive_idle: float | None = None
    keepalive_interval: float = 75.0
    keepalive_count: int = 9

    def __post_init__(self) -> None:
        if not MIN_MSS <= self.mss <= 65535 - 60:
            raise ValueError(f"TCP MSS {self.mss} out of range {MIN_MSS}..{65535 - 60}")
        if self.send_buffer < self.mss or self.receive_buffer < self.mss:
            raise ValueError("TCP send/receive buffers must hold at least one MSS")
        if self.receive_buffer > (0xFFFF << 14):
            raise ValueError("TCP receive buffer exceeds the largest scaled window (1 GiB)")


@dataclass(frozen=True, slots=True)
class Connected:
    """The handshake completed."""


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Bytes wait in the receive buffer: call :meth:`TcpConnection.read`."""


@dataclass(frozen=True, slots=True)
class EofReceived:
    """The peer sent FIN: no more data will arrive (after what is buffered)."""


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The connection is over for the application (CLOSED or TIME-WAIT).
    ``errno`` is set when it ended abnormally (refused, reset, timed out)."""

    errno: int | None = None
    reason: str | None = None


Event = Connected | DataReceived | EofReceived | ConnectionClosed


def isn_rfc6528(
    secret: bytes, local: bytes, lport: int, remote: bytes, rport: int, now: float
) -> int:
    """ISN = M + F(4-tuple, secret) (RFC 6528 section 3): M a 4-microsecond timer, F a
    keyed hash (BLAKE2b) of the connection identifiers."""
    ident = local + lport.to_bytes(2, "big") + remote + rport.to_bytes(2, "big")
    f = int.from_bytes(hashlib.blake2b(ident, key=secret, digest_size=4).digest(), "big")
    return (int(now * 250_000) + f) & 0xFFFFFFFF
