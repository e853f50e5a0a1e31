"""One peer connection after the handshake (ironwood ``network/peers.go``).

:class:`PeerSession` is sans-IO: :meth:`~PeerSession.receive_data` takes stream bytes
and returns complete frame bodies (raising ValueError on a malformed or oversize
frame), ``send_direct`` / ``send_queued`` are called by the router, and
:meth:`~PeerSession.data_to_send` yields the bytes to write. :meth:`~PeerSession.poll`
applies ironwood's keepalive rules, driven by the owner's clock:

* after we send anything but a keepalive, the peer must send *something* within
  ``peer_timeout`` (3 s) or the link is dead;
* after we receive anything but a keepalive, we must answer within
  ``peer_keepalive_delay`` (1 s), with a keepalive if nothing else went out.

Protocol messages (tree, bloom) are written directly; traffic, notifies, broken
notices and lookups go through a bounded :class:`PacketQueue` that drops the oldest
packet of the largest flow once the queue head waited longer than 25 ms.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from .config import NetworkConfig
from .wire import FrameDecoder, PacketType, encode_frame

__all__ = ["PacketQueue", "PeerSession", "PollResult", "PortAllocator"]

_KEEPALIVE_FRAME = encode_frame(PacketType.KEEPALIVE, b"")


class PortAllocator:
    """``peers.addPeer``: links to one key share a port; new keys take the lowest free ≥ 1."""

    def __init__(self) -> None:
        self._by_key: dict[bytes, tuple[int, int]] = {}  # key -> (port, link count)

    def acquire(self, key: bytes) -> int:
        if key in self._by_key:
            port, count = self._by_key[key]
            self._by_key[key] = (port, count + 1)
            return port
        used = {port for port, _ in self._by_key.values()}
        port = 1
        while port in used:
            port += 1
        self._by_key[key] = (port, 1)
        return port

    def release(self, key: bytes) -> None:
        port, count = self._by_key[key]
        if count <= 1:
            del self._by_key[key]
        else:
            self._by_key[key] = (port, count - 1)


@dataclass(slots=True)
class _Flow:
    packets: deque[tuple[float, bytes]] = field(default_factory=deque)
    size: int = 0


class PacketQueue:
    """Per-(dest, source) FIFO flows; pop oldest overall, drop from the largest dest."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._flows: dict[tuple[bytes, bytes], _Flow] = {}
        self.size = 0
        self.dropped = 0

    def __len__(self) -> int:
        return sum(len(f.packets) for f in self._flows.values())

    def push(self, frame: bytes, source: bytes, dest: bytes, now: float) -> None:
        flow = self._flows.setdefault((dest, source), _Flow())
        flow.packets.append((now, frame))
        flow.size += len(frame)
        self.size += len(frame)
        while self.size > self._max and self.drop():
            pass

    def head_time(self) -> float | None:
        times = [f.packets[0][0] for f in self._flows.values() if f.packets]
        return min(times) if times else None

    def pop(self) -> bytes | None:
        best: tuple[bytes, bytes] | None = None
        best_time = 0.0
        for fid, flow in self._flows.items():
            if flow.packets and (best is None or flow.packets[0][0] < best_time):
                best, best_time = fid, flow.packets[0][0]
        if best is None:
            return None
        return self._take(best)

    def drop(self) -> bool:
        """Drop the oldest packet of the largest source flow of the largest destination."""
        if not self._flows:
            return False
        dest_sizes: dict[bytes, int] = {}
        for (dest, _src), flow in self._flows.items():
            dest_sizes[dest] = dest_sizes.get(dest, 0) + flow.size
        big_dest = max(dest_sizes, key=lambda d: dest_sizes[d])
        fid = max((f for f in self._flows if f[0] == big_dest), key=lambda f: self._flows[f].size)
        self._take(fid)
        self.dropped += 1
        return True

    def _take(self, fid: tuple[bytes, bytes]) -> bytes:
        flow = self._flows[fid]
        _t, frame = flow.packets.popleft()
        flow.size -= len(frame)
        self.size -= len(frame)
        if not flow.packets:
            del self._flows[fid]
        return frame


class PollResult(enum.Enum):
    IDLE = "idle"
    TIMED_OUT = "timed_out"


class PeerSession:
    """Framing, keepalive and queueing for one established link."""

    def __init__(
        self,
        key: bytes,
        port: int,
        prio: int,
        order: int,
        config: NetworkConfig,
        now: float,
    ) -> None:
        self.key = key
        self.port = port
        self.prio = prio
        self.order = order
        self.sigreq_sent_at = now
        self._config = config
        self._decoder = FrameDecoder(config.peer_max_message_size)
        self._out = bytearray()
        self.queue = PacketQueue(config.queue_max_bytes)
        self._read_deadline: float | None = None
        self._keepalive_at: float | None = None
        self._now = now
        self.rx_bytes = 0
        self.tx_bytes = 0

    # -- receive --------------------------------------------------------------

    def receive_data(self, data: bytes | memoryview, now: float) -> list[bytes]:
        self._now = now
        self.rx_bytes += len(data)
        frames = self._decoder.feed(data)
        for frame in frames:
            self._read_deadline = None
            if frame[0] not in (PacketType.DUMMY, PacketType.KEEPALIVE) and (
                self._keepalive_at is None
            ):
                self._keepalive_at = now + self._config.peer_keepalive_delay
        return frames

    # -- send (router side) ----------------------------------------------------

    def send_direct(self, ptype: PacketType, body: bytes) -> None:
        if len(body) + 1 > self._config.peer_max_message_size:
            return  # ironwood silently refuses oversize messages
        self._write(encode_frame(ptype, body), ptype)

    def send_queued(self, ptype: PacketType, body: bytes, source: bytes, dest: bytes) -> None:
        if len(body) + 1 > self._config.peer_max_message_size:
            return
        frame = encode_frame(ptype, body)
        head = self.queue.head_time()
        if head is not None and self._now - head > self._config.queue_delay:
            self.queue.drop()
        self.queue.push(frame, source, dest, self._now)

    def _write(self, frame: bytes, ptype: PacketType) -> None:
        self._out += frame
        self._keepalive_at = None
        if ptype not in (PacketType.DUMMY, PacketType.KEEPALIVE) and self._read_deadline is None:
            self._read_deadline = self._now + self._config.peer_timeout

    def data_to_send(self, budget: int) -> bytes:
        """Pending direct frames, then queued packets while under ``budget`` bytes."""
        while len(self._out) < budget:
            frame = self.queue.pop()
            if frame is None:
                break
            self._write(frame, PacketType(frame_type(frame)))
        out = bytes(self._out)
        self._out.clear()
        self.tx_bytes += len(out)
        return out

    # -- timers ---------------------------------------------------------------

    def poll(self, now: float) -> PollResult:
        self._now = now
        if self._read_deadline is not None and now >= self._read_deadline:
            return PollResult.TIMED_OUT
        if self._keepalive_at is not None and now >= self._keepalive_at:
            self._keepalive_at = None
            self._out += _KEEPALIVE_FRAME
        return PollResult.IDLE

    def set_now(self, now: float) -> None:
        self._now = now


def frame_type(frame: bytes) -> int:
    """The type byte of an encoded frame (after its uvarint length)."""
    for i, byte in enumerate(frame):
        if byte < 0x80:
            return frame[i + 1]
    raise ValueError("frame without a length prefix")
