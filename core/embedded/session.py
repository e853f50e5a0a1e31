"""ironwood encrypted sessions as a sans-IO state machine (``encrypted/session.go``).

A :class:`SessionManager` is fed what the routed network delivers
(:meth:`SessionManager.handle_data`) and what the application wants to send
(:meth:`SessionManager.write_to`); it produces :class:`Transmit` events (bytes for the
routed network) and :class:`Deliver` events (decrypted application payloads). It owns
no socket, no task and no clock: the caller injects ``clock`` (monotonic seconds, for
timeouts) and ``wallclock`` (Unix seconds, for the ``seq`` of inits).

Wire formats (all byte-exact with ironwood 743fe2f)::

    init / ack (193 bytes)
      type(1: 1=init 2=ack) | ephemeral box pub (32) |
      box(nonce 0, shared(ephemeral, receiver's long-term box key)) of
        ed25519 sig (64) | current box pub (32) | next box pub (32) |
        keySeq (u64 BE) | seq (u64 BE, Unix seconds)
      sig covers: ephemeral pub | current | next | keySeq | seq

    traffic
      type(1: 3) | uvarint sender keySeq | uvarint receiver keySeq (as the sender knows
      it) | uvarint nonce | box(nonce, shared) of sender's next box pub (32) | payload

Receiving follows ``sessionInfo.doRecv``: the two key sequence numbers select which of
four precomputed shared keys applies and may ratchet both sides' keys forward (at most
once a minute). Upstream accepts a nonce only if it is larger than every nonce seen on
that key; here each key has a :class:`ReplayWindow` that also accepts a not-yet-seen
nonce up to ``replay_window - 1`` behind the largest (``replay_window=0`` is upstream's
rule exactly). This is receiver-local and does not change the wire.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from core.embedded import crypto

__all__ = [
    "SESSION_INIT_SIZE",
    "SESSION_TRAFFIC_OVERHEAD",
    "SESSION_TRAFFIC_OVERHEAD_MIN",
    "Deliver",
    "ReplayWindow",
    "SessionConfig",
    "SessionInit",
    "SessionManager",
    "SessionStats",
    "SessionType",
    "Transmit",
    "decode_uvarint",
    "encode_uvarint",
]

log = logging.getLogger(__name__)

_U64 = (1 << 64) - 1


class SessionType:
    """First byte of every session packet (``sessionType*`` in session.go)."""

    DUMMY = 0
    INIT = 1
    ACK = 2
    TRAFFIC = 3


SESSION_TRAFFIC_OVERHEAD_MIN = 1 + 1 + 1 + 1 + crypto.BOX_OVERHEAD + crypto.BOX_PUB_SIZE
SESSION_TRAFFIC_OVERHEAD = SESSION_TRAFFIC_OVERHEAD_MIN + 9 + 9 + 9
SESSION_INIT_SIZE = (
    1 + crypto.BOX_PUB_SIZE + crypto.BOX_OVERHEAD + crypto.ED_SIG_SIZE + 32 + 32 + 8 + 8
)


def encode_uvarint(value: int) -> bytes:
    """Go ``binary.PutUvarint``."""
    if not 0 <= value <= _U64:
        raise ValueError(f"uvarint {value} does not fit in a uint64")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_uvarint(data: bytes, offset: int) -> tuple[int, int]:
    """Go ``binary.Uvarint`` from ``offset``: ``(value, new_offset)``.

    Raises :class:`ValueError` where Go returns ``n <= 0`` (truncated, or more than
    64 bits).
    """
    value = 0
    shift = 0
    for index in range(10):
        if offset + index >= len(data):
            raise ValueError("truncated uvarint")
        byte = data[offset + index]
        if byte < 0x80:
            if index == 9 and byte > 1:
                raise ValueError("uvarint overflows a uint64")
            return value | (byte << shift), offset + index + 1
        value |= (byte & 0x7F) << shift
        shift += 7
    raise ValueError("uvarint overflows a uint64")


@dataclass(frozen=True)
class SessionConfig:
    """Timers and bounds. Defaults are upstream's where upstream has one."""

    session_timeout: float = 60.0  # sessionTimeout
    buffer_timeout: float = 60.0  # the sessionBuffer's timer
    rotation_interval: float = 60.0  # "time.Since(info.rotated) > time.Minute"
    replay_window: int = 64  # 0 = upstream's strictly-increasing rule
    buffer_packets: int = 1  # upstream keeps only the latest packet per destination
    max_buffers: int = 1024  # destinations with packets waiting for a session
    max_sessions: int = 4096
    max_events: int = 4096  # undrained output events before the oldest is dropped
    # When a peer restarts (an init with fresh keys on a live session), the last packet
    # we sent it within this many seconds is sent again in the new session: the restarted
    # peer could not decrypt it. 0 disables. Only packets up to resend_max_bytes are kept.
    resend_window: float = 3.0
    resend_max_bytes: int = 4096
    # The init that answers traffic for a session we do not have (we restarted) is sent
    # again after these delays until the session opens: right after a restart the
    # routed network may still be looking up the way back, and no write of ours would
    # send it again. Upstream sends it once.
    answer_retries: tuple[float, ...] = (0.3, 0.7, 1.5)  # past the 1 s lookup throttle

    def __post_init__(self) -> None:
        if self.replay_window < 0 or self.replay_window > 4096:
            raise ValueError("replay_window must be between 0 and 4096")
        for name in ("buffer_packets", "max_buffers", "max_sessions", "max_events"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


@dataclass(frozen=True)
class Transmit:
    """Send ``data`` to ``dest`` over the routed network."""

    dest: bytes
    data: bytes


@dataclass(frozen=True)
class Deliver:
    """``data`` arrived from ``source`` in an authenticated session."""

    source: bytes
    data: bytes


Event = Transmit | Deliver


@dataclass(frozen=True)
class SessionStats:
    """One row of ``getSessions`` (``encrypted/debug.go``)."""

    key: bytes
    uptime: float
    rx_bytes: int
    tx_bytes: int


class ReplayWindow:
    """Largest nonce seen on one key, plus a bitmap of the ``size`` below it."""

    __slots__ = ("_bits", "highest", "size")

    def __init__(self, size: int, highest: int = 0) -> None:
        self.size = size
        self.highest = highest
        self._bits = 0  # bit i set: nonce highest-1-i was seen

    def acceptable(self, nonce: int) -> bool:
        if nonce > self.highest:
            return True
        behind = self.highest - nonce
        if behind == 0 or behind >= self.size:
            return False
        return not (self._bits >> (behind - 1)) & 1

    def commit(self, nonce: int) -> None:
        if nonce > self.highest:
            shift = nonce - self.highest
            if shift >= self.size:
                self._bits = 0  # the old highest falls out of the window
            else:
                mask = (1 << (self.size - 1)) - 1
                self._bits = ((self._bits << shift) | (1 << (shift - 1))) & mask
            self.highest = nonce
        elif nonce < self.highest:
            self._bits |= 1 << (self.highest - nonce - 1)


@dataclass(frozen=True)
class SessionInit:
    """The signed body of an init or ack (``sessionInit``)."""

    current: bytes
    next: bytes
    key_seq: int
    seq: int

    def encrypt(self, seed: bytes, to_key: bytes, kind: int = SessionType.INIT) -> bytes:
        """``sessionInit.encrypt`` (``kind`` ACK gives ``sessionAck.encrypt``)."""
        eph_pub, eph_priv = crypto.new_box_keys()
        signed = (
            eph_pub
            + self.current
            + self.next
            + self.key_seq.to_bytes(8, "big")
            + self.seq.to_bytes(8, "big")
        )
        payload = crypto.ed_sign(signed, seed) + signed[crypto.BOX_PUB_SIZE :]
        shared = crypto.box_shared(crypto.ed25519_public_to_x25519(to_key), eph_priv)
        data = bytes([kind]) + eph_pub + crypto.box_seal(payload, 0, shared)
        assert len(data) == SESSION_INIT_SIZE
        return data

    @classmethod
    def decrypt(cls, box_priv: bytes, from_key: bytes, data: bytes) -> SessionInit:
        """``sessionInit.decrypt``; :class:`ValueError` unless it opens and verifies."""
        if len(data) != SESSION_INIT_SIZE:
            raise ValueError(f"session init is {SESSION_INIT_SIZE} bytes, got {len(data)}")
        eph_pub = data[1 : 1 + crypto.BOX_PUB_SIZE]
        shared = crypto.box_shared(eph_pub, box_priv)
        payload = crypto.box_open(data[1 + crypto.BOX_PUB_SIZE :], 0, shared)
        if payload is None:
            raise ValueError("session init does not decrypt")
        sig, rest = payload[: crypto.ED_SIG_SIZE], payload[crypto.ED_SIG_SIZE :]
        if not crypto.ed_verify(eph_pub + rest, sig, from_key):
            raise ValueError("session init signature does not verify")
        if not (crypto.is_usable_box_key(rest[0:32]) and crypto.is_usable_box_key(rest[32:64])):
            raise ValueError("session init carries a low-order box key")
        return cls(
            current=rest[0:32],
            next=rest[32:64],
            key_seq=int.from_bytes(rest[64:72], "big"),
            seq=int.from_bytes(rest[72:80], "big"),
        )


@dataclass
class _KeyPair:
    public: bytes
    private: bytes

    @classmethod
    def fresh(cls) -> _KeyPair:
        return cls(*crypto.new_box_keys())


@dataclass
class _Session:
    """``sessionInfo``: one peer's ratcheting key state."""

    ed: bytes
    seq: int  # remote seq (timestamp of their last accepted init/ack)
    current: bytes  # their key we send to / expect to receive from
    next: bytes  # their next key
    since: float
    deadline: float
    window_size: int
    remote_key_seq: int = 0
    local_key_seq: int = 0
    recv: _KeyPair = field(default_factory=_KeyPair.fresh)
    send: _KeyPair = field(default_factory=_KeyPair.fresh)
    nxt: _KeyPair = field(default_factory=_KeyPair.fresh)
    send_nonce: int = 0
    rotated: float | None = None
    rx: int = 0
    tx: int = 0
    recv_shared: bytes = b""
    send_shared: bytes = b""
    next_send_shared: bytes = b""
    next_recv_shared: bytes = b""
    recv_window: ReplayWindow = field(default_factory=lambda: ReplayWindow(0))
    # Set when this session replaced one the peer lost (it restarted); until the peer's
    # first packet opens here, an ack from the same second as its init is accepted.
    reset: bool = False
    last_sent: tuple[float, bytes] | None = None  # (clock, payload) for resend_window
    next_send_window: ReplayWindow = field(default_factory=lambda: ReplayWindow(0))
    next_recv_window: ReplayWindow = field(default_factory=lambda: ReplayWindow(0))
    # The traffic header up to the nonce, for the key sequence numbers it was made for.
    header_for: tuple[int, int] = (-1, -1)
    header: bytes = b""

    def traffic_header(self) -> bytes:
        """type | uvarint local keySeq | uvarint remote keySeq (cached while they hold)."""
        seqs = (self.local_key_seq, self.remote_key_seq)
        if seqs != self.header_for:
            self.header = (
                bytes([SessionType.TRAFFIC]) + encode_uvarint(seqs[0]) + encode_uvarint(seqs[1])
            )
            self.header_for = seqs
        return self.header

    def fix_shared(self, recv_nonce: int, send_nonce: int) -> None:
        """``_fixShared``. Raises ValueError if a remote key has low order."""
        self.recv_shared = crypto.box_shared(self.current, self.recv.private)
        self.send_shared = crypto.box_shared(self.current, self.send.private)
        self.next_send_shared = crypto.box_shared(self.next, self.send.private)
        self.next_recv_shared = crypto.box_shared(self.next, self.recv.private)
        self.recv_window = ReplayWindow(self.window_size, recv_nonce)
        self.next_send_window = ReplayWindow(self.window_size)
        self.next_recv_window = ReplayWindow(self.window_size)
        self.send_nonce = send_nonce

    def advance_local_keys(self) -> None:
        self.recv, self.send, self.nxt = self.send, self.nxt, _KeyPair.fresh()
        self.local_key_seq += 1


@dataclass
class _Buffer:
    """``sessionBuffer``: packets waiting for the first ack, and the init keys."""

    init: SessionInit
    current_priv: bytes
    next_priv: bytes
    packets: deque[bytes]
    deadline: float
    retries: int = 0  # answer_retries used
    retry_at: float | None = None  # when the init goes again (an answer to traffic)


class SessionManager:
    """All sessions of one node (``sessionManager``), sans-IO."""

    def __init__(
        self,
        seed: bytes,
        *,
        clock: Callable[[], float],
        wallclock: Callable[[], float] = time.time,
        config: SessionConfig | None = None,
    ) -> None:
        if len(seed) != 32:
            raise ValueError(f"an Ed25519 seed is 32 bytes, got {len(seed)}")
        self._seed = seed
        self._box_priv = crypto.ed25519_private_to_x25519(seed)
        self._clock = clock
        self._wallclock = wallclock
        self.config = config or SessionConfig()
        self._sessions: OrderedDict[bytes, _Session] = OrderedDict()
        self._buffers: OrderedDict[bytes, _Buffer] = OrderedDict()
        self._events: deque[Event] = deque()
        self._opened: OrderedDict[bytes, None] = OrderedDict()
        self.dropped_events = 0
        # Why packets were not delivered: bad_packet, no_session, unknown_key_seq,
        # replayed, undecryptable (the last two are upstream's silent drops / re-inits).
        self.counters: Counter[str] = Counter()

    # -- events -------------------------------------------------------------

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def events(self) -> list[Event]:
        out = list(self._events)
        self._events.clear()
        return out

    def now(self) -> float:
        """The injected clock (what :meth:`next_retry` is measured in)."""
        return self._clock()

    def take_opened(self) -> list[bytes]:
        """Keys whose session was created, or re-created after the peer restarted,
        since the last call (a node's ``session.up``)."""
        out = list(self._opened)
        self._opened.clear()
        return out

    def _emit(self, event: Event) -> None:
        if len(self._events) >= self.config.max_events:
            self._events.popleft()
            self.dropped_events += 1
        self._events.append(event)

    # -- inputs ---------------------------------------------------------------

    def write_to(self, dest: bytes, message: bytes) -> None:
        """``sessionManager.writeTo``: encrypt into the session, or buffer and init."""
        if len(dest) != crypto.ED_PUB_SIZE:
            raise ValueError(f"destination key must be 32 bytes, got {len(dest)}")
        info = self._live_session(dest)
        if info is not None:
            self._do_send(info, message)
        else:
            self._buffer_and_init(dest, message)

    def handle_data(self, source: bytes, data: bytes) -> None:
        """``sessionManager.handleData``: one packet from the routed network.

        Malformed or unauthenticated packets are dropped (logged at debug level).
        """
        message = self.receive(source, data)
        if message is not None:
            self.handle_opened(source, message)

    def receive(self, source: bytes, data: bytes) -> bytes | None:
        """:meth:`handle_data`, but the payload of traffic that opens in an established
        session is returned instead of queued as a :class:`Deliver` (the fast path of
        :class:`~core.embedded.packetconn.EncryptedPacketConn`); everything else (inits,
        acks, drops, the init a stale packet asks for) is as :meth:`handle_data`."""
        if len(source) != crypto.ED_PUB_SIZE or not data:
            return None
        kind = data[0]
        try:
            if kind == SessionType.TRAFFIC:
                info = self._live_session(source)
                if info is not None:
                    return self._open(info, data)
                self._handle_traffic(source, data)
            elif kind in (SessionType.INIT, SessionType.ACK):
                init = SessionInit.decrypt(self._box_priv, source, data)
                if kind == SessionType.INIT:
                    self._handle_init(source, init)
                else:
                    self._handle_ack(source, init)
        except ValueError as exc:
            self.counters["bad_packet"] += 1
            log.debug("dropped session packet type %d from %s: %s", kind, source.hex()[:16], exc)
        return None

    def seal(self, dest: bytes, message: bytes) -> bytes | None:
        """The traffic packet carrying ``message`` in the established session with
        ``dest`` (the fast path of :meth:`write_to`: nothing queued), or ``None`` when
        there is no live session: then call :meth:`write_to`."""
        info = self._sessions.get(dest)
        if info is None or info.deadline <= self._clock():
            return None
        return self._seal(info, message)

    def handle_opened(self, source: bytes, message: bytes) -> None:
        """Queue a payload :meth:`receive` returned as a :class:`Deliver` event (behind
        the events already queued)."""
        self._emit(Deliver(source, message))

    @property
    def pending(self) -> int:
        """Output events not taken yet."""
        return len(self._events)

    def expire(self) -> None:
        """Forget sessions and buffers whose timers ran out (upstream's AfterFuncs)."""
        now = self._clock()
        for key in [k for k, s in self._sessions.items() if s.deadline <= now]:
            del self._sessions[key]
        for key in [k for k, b in self._buffers.items() if b.deadline <= now]:
            del self._buffers[key]

    # -- queries --------------------------------------------------------------

    def sessions(self) -> list[SessionStats]:
        now = self._clock()
        return [
            SessionStats(key=s.ed, uptime=now - s.since, rx_bytes=s.rx, tx_bytes=s.tx)
            for s in self._sessions.values()
            if s.deadline > now
        ]

    def has_session(self, key: bytes) -> bool:
        return self._live_session(key) is not None

    def buffered(self, key: bytes) -> int:
        buf = self._buffers.get(key)
        return len(buf.packets) if buf is not None and buf.deadline > self._clock() else 0

    # -- internals --------------------------------------------------------------

    def _live_session(self, key: bytes) -> _Session | None:
        info = self._sessions.get(key)
        if info is not None and info.deadline <= self._clock():
            del self._sessions[key]
            return None
        return info

    def _new_init(self, current: bytes, nxt: bytes, key_seq: int) -> SessionInit:
        return SessionInit(current, nxt, key_seq, int(self._wallclock()) & _U64)

    def _send_init(self, dest: bytes, init: SessionInit, kind: int = SessionType.INIT) -> None:
        self._emit(Transmit(dest, init.encrypt(self._seed, dest, kind)))

    def _new_session(self, ed: bytes, init: SessionInit) -> _Session:
        now = self._clock()
        info = _Session(
            ed=ed,
            seq=(init.seq - 1) & _U64,
            current=init.current,
            next=init.next,
            since=now,
            deadline=now + self.config.session_timeout,
            window_size=self.config.replay_window,
        )
        info.fix_shared(0, 0)
        self._sessions.pop(ed, None)
        while len(self._sessions) >= self.config.max_sessions:
            evicted, _ = self._sessions.popitem(last=False)
            log.warning("session table full: forgot %s", evicted.hex()[:16])
        self._sessions[ed] = info
        self._opened[ed] = None
        while len(self._opened) > self.config.max_sessions:
            self._opened.popitem(last=False)
        return info

    def _session_for_init(self, ed: bytes, init: SessionInit) -> tuple[_Session, _Buffer | None]:
        info = self._live_session(ed)
        buf: _Buffer | None = None
        if info is None:
            info = self._new_session(ed, init)
            buf = self._buffers.pop(ed, None)
            if buf is not None:
                if buf.deadline <= self._clock():
                    buf = None
                else:
                    info.send = _KeyPair(buf.init.current, buf.current_priv)
                    info.nxt = _KeyPair(buf.init.next, buf.next_priv)
                    info.fix_shared(0, 0)
        return info, buf

    def _handle_init(self, ed: bytes, init: SessionInit) -> None:
        old = self._live_session(ed)
        if old is not None and self._peer_restarted(old, init):
            self._reset_session(old, init)
            return
        info, buf = self._session_for_init(ed, init)
        self._info_handle_init(info, init)
        self._flush_buffer(info, buf)

    @staticmethod
    def _peer_restarted(info: _Session, init: SessionInit) -> bool:
        """An init that starts the peer's key sequence over with keys we never saw.

        A peer that still has our session sends inits with its current key sequence
        number (at least 1 once it answered us) or repeats the keys of its first init;
        key sequence 0 with new keys means it lost the session (it restarted, or its
        session timed out): ours is stale and everything we send in it is unreadable.
        """
        return (
            init.key_seq == 0
            and init.seq > info.seq
            and init.current not in (info.current, info.next)
        )

    def _reset_session(self, old: _Session, init: SessionInit) -> None:
        """Replace ``old`` with a new session from ``init`` (upstream keeps the stale
        one and only adopts the keys; its uptime, nonces and counters carry on)."""
        log.debug("session with %s: the peer restarted; new session", old.ed.hex()[:16])
        self.counters["peer_restarted"] += 1
        info = self._new_session(old.ed, init)
        info.reset = True
        self._info_handle_init(info, init)
        last = old.last_sent
        if last is not None and self._clock() - last[0] <= self.config.resend_window:
            self._do_send(info, last[1])  # the restarted peer could not read it

    def _handle_ack(self, ed: bytes, ack: SessionInit) -> None:
        is_old = self._live_session(ed) is not None
        info, buf = self._session_for_init(ed, ack)
        if is_old:
            if ack.seq > info.seq or (
                # A peer answering our reset acks within the second of its init.
                info.reset and ack.seq == info.seq and ack.key_seq > info.remote_key_seq
            ):
                self._handle_update(info, ack)
        else:
            self._info_handle_init(info, ack)
        self._flush_buffer(info, buf)

    def _flush_buffer(self, info: _Session, buf: _Buffer | None) -> None:
        if buf is not None:
            for packet in buf.packets:
                self._do_send(info, packet)

    def _info_handle_init(self, info: _Session, init: SessionInit) -> None:
        if init.seq <= info.seq:
            return
        self._handle_update(info, init)
        ack = self._new_init(info.send.public, info.nxt.public, info.local_key_seq)
        self._send_init(info.ed, ack, SessionType.ACK)

    def _handle_update(self, info: _Session, init: SessionInit) -> None:
        """``_handleUpdate``: adopt their keys and advance ours."""
        info.current, info.next = init.current, init.next
        info.seq = init.seq
        info.remote_key_seq = init.key_seq
        info.advance_local_keys()
        info.fix_shared(0, info.send_nonce)  # never roll back the send nonce
        info.deadline = self._clock() + self.config.session_timeout

    def _handle_traffic(self, ed: bytes, data: bytes) -> None:
        # Unknown sender: most likely we restarted and it still has our old session.
        # Upstream answers with an init of keys it forgets at once, so the sender adopts
        # keys nobody holds and heals only when a later init has a newer timestamp
        # (a second or more, then its next retransmission). We keep the keys in the
        # bounded init buffer instead, as if we were opening the session: the sender's
        # ack then opens it here with keys both sides share. A spoofed sender costs one
        # buffer slot (max_buffers, oldest first, buffer_timeout) and 1 + len(answer_retries)
        # inits, stopped as soon as the session opens.
        self.counters["no_session"] += 1
        buf = self._init_buffer(ed)
        if buf.retry_at is None and self.config.answer_retries:
            buf.retries = 0
            buf.retry_at = self._clock() + self.config.answer_retries[0]

    def next_retry(self) -> float | None:
        """When :meth:`retry` has an init to send again (clock seconds), if ever."""
        times = [b.retry_at for b in self._buffers.values() if b.retry_at is not None]
        return min(times) if times else None

    def retry(self) -> None:
        """Send again the answering inits that are due (see ``answer_retries``)."""
        now = self._clock()
        delays = self.config.answer_retries
        for dest, buf in list(self._buffers.items()):
            if buf.retry_at is None or buf.retry_at > now:
                continue
            if buf.deadline <= now or dest in self._sessions:
                buf.retry_at = None
                continue
            buf.retries += 1
            buf.retry_at = now + delays[buf.retries] if buf.retries < len(delays) else None
            self.counters["answer_retried"] += 1
            buf.init = replace(buf.init, seq=int(self._wallclock()) & _U64)
            self._send_init(dest, buf.init)

    def _init_buffer(self, dest: bytes, message: bytes | None = None) -> _Buffer:
        now = self._clock()
        buf = self._buffers.get(dest)
        if buf is not None and buf.deadline <= now:
            del self._buffers[dest]
            buf = None
        if buf is None:
            current = _KeyPair.fresh()
            nxt = _KeyPair.fresh()
            buf = _Buffer(
                init=self._new_init(current.public, nxt.public, 0),
                current_priv=current.private,
                next_priv=nxt.private,
                packets=deque(maxlen=self.config.buffer_packets),
                deadline=now,
            )
            while len(self._buffers) >= self.config.max_buffers:
                self._buffers.popitem(last=False)
            self._buffers[dest] = buf
        else:
            # Upstream re-sends the very same init. If the peer's ack was lost, the
            # peer ignores that copy (same seq) until its session times out a minute
            # later. A fresh timestamp (same keys) makes it answer again.
            buf.init = replace(buf.init, seq=int(self._wallclock()) & _U64)
        if message is not None:
            buf.packets.append(message)
        buf.deadline = now + self.config.buffer_timeout
        self._send_init(dest, buf.init)
        return buf

    def _buffer_and_init(self, dest: bytes, message: bytes) -> None:
        self._init_buffer(dest, message)

    def _do_send(self, info: _Session, message: bytes) -> None:
        self._emit(Transmit(info.ed, self._seal(info, message)))

    def _seal(self, info: _Session, message: bytes) -> bytes:
        """``sessionInfo.doSend``: the next nonce, the header, the box."""
        info.send_nonce = (info.send_nonce + 1) & _U64
        if info.send_nonce == 0:  # nonce wrapped: rotate our keys
            info.advance_local_keys()
            info.fix_shared(0, 0)
            info.send_nonce = 0
        sealed = crypto.box_seal(info.nxt.public + message, info.send_nonce, info.send_shared)
        now = self._clock()
        if self.config.resend_window > 0 and len(message) <= self.config.resend_max_bytes:
            info.last_sent = (now, message)
        else:
            info.last_sent = None
        info.tx += len(message)
        info.deadline = now + self.config.session_timeout
        return info.traffic_header() + encode_uvarint(info.send_nonce) + sealed

    def _open(self, info: _Session, data: bytes) -> bytes | None:
        """``sessionInfo.doRecv``: the payload of one traffic packet, or ``None`` (dropped
        and counted; an init may be queued to resynchronise keys)."""
        if len(data) < SESSION_TRAFFIC_OVERHEAD_MIN:
            raise ValueError(f"traffic packet of {len(data)} bytes is too short")
        remote_key_seq, offset = decode_uvarint(data, 1)
        local_key_seq, offset = decode_uvarint(data, offset)
        nonce, offset = decode_uvarint(data, offset)
        from_current = remote_key_seq == info.remote_key_seq
        from_next = remote_key_seq == info.remote_key_seq + 1
        to_recv = local_key_seq + 1 == info.local_key_seq
        to_send = local_key_seq == info.local_key_seq
        if from_current and to_recv:
            window, shared, ratchet = info.recv_window, info.recv_shared, False
        elif from_next and to_send:
            window, shared, ratchet = info.next_send_window, info.next_send_shared, True
        elif from_next and to_recv:
            window, shared, ratchet = info.next_recv_window, info.next_recv_shared, True
        else:
            # We can't make sense of it: send an init and hope for an ack.
            self.counters["unknown_key_seq"] += 1
            self._resend_init(info)
            return None
        if not window.acceptable(nonce):
            self.counters["replayed"] += 1
            return None
        opened = crypto.box_open(data[offset:], nonce, shared)
        if opened is None or len(opened) < crypto.BOX_PUB_SIZE:
            self.counters["undecryptable"] += 1
            self._resend_init(info)  # keys out of sync (e.g. the peer restarted)
            return None
        inner_key, message = opened[: crypto.BOX_PUB_SIZE], opened[crypto.BOX_PUB_SIZE :]
        info.reset = False
        window.commit(nonce)
        if ratchet:
            self._maybe_ratchet(info, inner_key, window, inherit=shared is info.next_send_shared)
        info.rx += len(message)
        info.deadline = self._clock() + self.config.session_timeout
        return message

    def _maybe_ratchet(
        self, info: _Session, inner_key: bytes, window: ReplayWindow, *, inherit: bool
    ) -> None:
        now = self._clock()
        if info.rotated is not None and now - info.rotated <= self.config.rotation_interval:
            return
        if not crypto.is_usable_box_key(inner_key):
            return
        info.current, info.next = info.next, inner_key
        info.remote_key_seq += 1
        info.advance_local_keys()
        info.fix_shared(window.highest, 0)
        if inherit:  # the new receive key is the one that window guarded
            info.recv_window = window
        info.rotated = now

    def _resend_init(self, info: _Session) -> None:
        init = self._new_init(info.send.public, info.nxt.public, info.local_key_seq)
        self._send_init(info.ed, init)
