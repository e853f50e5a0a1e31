"""``mem://NAME:0``: an in-process byte pipe as a carrier (tests, in-memory meshes).

:class:`MemoryPipe` is one end of a bounded, ordered pipe with the
:class:`asyncio.Transport` surface a link needs (flow control included), so the whole
link protocol runs over it: meta handshake, frames, keepalives. :class:`MemoryCarrier`
makes it dialable by URI: networks that share one carrier (one :class:`MemoryHub`)
reach each other's ``mem://`` listeners by name. :class:`core.testing.MemMesh` joins
two links directly (``PacketNetwork.carrier_link``) with :meth:`MemoryPipe.pair`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from ..links import LinkConnection, PeerURI
from . import CarrierEnv, Listener, NewLink

__all__ = ["PIPE_HIGH_WATER", "MemoryCarrier", "MemoryHub", "MemoryPipe"]

PIPE_HIGH_WATER = 256 * 1024


class MemoryPipe(asyncio.Transport):
    """One end of an in-process byte pipe: what one end writes, the other receives on a
    later loop iteration, in order. Bounded: the writer is paused (``pause_writing``)
    while more than the high-water mark is unread on the other side (reading paused
    or not yet run), and resumed below the low-water mark."""

    def __init__(self, loop: asyncio.AbstractEventLoop, peername: str) -> None:
        super().__init__(extra={"peername": (peername, 0), "sockname": ("mem", 0)})
        self._loop = loop
        self._protocol: asyncio.BaseProtocol | None = None
        self.other: MemoryPipe | None = None
        self._closing = False
        self._lost = False
        self._reading_paused = False
        self._inbox: deque[bytes] = deque()  # arrived while reading was paused
        self._unread = 0  # bytes we wrote that the other side has not consumed
        self._high = PIPE_HIGH_WATER
        self._low = PIPE_HIGH_WATER // 4
        self._writing_paused = False

    @classmethod
    def pair(
        cls, loop: asyncio.AbstractEventLoop, name_a: str, name_b: str
    ) -> tuple[MemoryPipe, MemoryPipe]:
        """Two joined ends; ``a`` sees ``name_b`` as its peername and vice versa."""
        a, b = cls(loop, name_b), cls(loop, name_a)
        a.other, b.other = b, a
        return a, b

    def start(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        protocol.connection_made(self)

    # -- asyncio.Transport --------------------------------------------------------
    def pause_reading(self) -> None:
        self._set_reading(False)

    def resume_reading(self) -> None:
        self._set_reading(True)

    def _set_reading(self, on: bool) -> None:
        was_paused, self._reading_paused = self._reading_paused, not on
        if on and was_paused:
            self._loop.call_soon(self._drain_inbox)

    def is_reading(self) -> bool:
        return not (self._reading_paused or self._lost)

    def get_protocol(self) -> asyncio.BaseProtocol:
        if self._protocol is None:
            raise RuntimeError("this pipe end is not started (MemoryPipe.start)")
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def is_closing(self) -> bool:
        return self._closing or self._lost

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = PIPE_HIGH_WATER if high is None else high
        self._low = self._high // 4 if low is None else low

    def get_write_buffer_size(self) -> int:
        return self._unread

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data or self.other is None:
            return
        chunk = bytes(data)
        self._unread += len(chunk)
        self._loop.call_soon(self.other._arrive, chunk)
        if not self._writing_paused and self._unread > self._high:
            self._writing_paused = True
            if isinstance(self._protocol, asyncio.Protocol):
                self._protocol.pause_writing()

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("a memory pipe has no half-close")

    def close(self) -> None:
        """Both ends lose the connection after the data already written arrived."""
        if self._closing:
            return
        self._closing = True
        self._loop.call_soon(self._hang_up)

    def abort(self) -> None:
        """Both ends lose the connection now; data in flight is dropped."""
        self._closing = True
        self._hang_up()

    # -- the other end ------------------------------------------------------------------
    def _arrive(self, chunk: bytes) -> None:
        if self._lost:
            return
        if self._reading_paused or self._inbox:
            self._inbox.append(chunk)
            return
        self._consume(chunk)

    def _drain_inbox(self) -> None:
        while self._inbox and not self._reading_paused and not self._lost:
            self._consume(self._inbox.popleft())

    def _consume(self, chunk: bytes) -> None:
        if self.other is not None:
            self.other._consumed(len(chunk))
        if isinstance(self._protocol, asyncio.Protocol):
            self._protocol.data_received(chunk)

    def _consumed(self, size: int) -> None:
        self._unread = max(self._unread - size, 0)
        if self._writing_paused and self._unread <= self._low and not self._lost:
            self._writing_paused = False
            if isinstance(self._protocol, asyncio.Protocol):
                self._protocol.resume_writing()

    def _hang_up(self) -> None:
        for end in (self, self.other):
            if end is not None:
                end._lose()

    def _lose(self) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._inbox.clear()
        if self._protocol is not None:
            self._loop.call_soon(self._protocol.connection_lost, None)


@dataclass(slots=True)
class MemoryHub:
    """The ``mem://`` names listening in one process (one hub per test or mesh)."""

    listeners: dict[str, NewLink] = field(default_factory=dict)


@dataclass(slots=True)
class _MemoryListener:
    hub: MemoryHub
    name: str

    @property
    def uri(self) -> str:
        return f"mem://{self.name}:0"

    def close(self) -> None:
        self.hub.listeners.pop(self.name, None)

    async def wait_closed(self) -> None:
        return None


class MemoryCarrier:
    scheme = "mem"
    can_listen = True

    def __init__(self, hub: MemoryHub | None = None) -> None:
        self.hub = hub or MemoryHub()

    async def dial(self, uri: PeerURI, conn: LinkConnection, env: CarrierEnv) -> None:
        new_link = self.hub.listeners.get(uri.host)
        if new_link is None:
            raise ConnectionRefusedError(f"nothing listens on mem://{uri.host}")
        loop = asyncio.get_running_loop()
        mine, theirs = MemoryPipe.pair(loop, "dialer", uri.host)
        theirs.start(new_link())
        mine.start(conn)

    async def listen(self, uri: PeerURI, new_link: NewLink, env: CarrierEnv) -> Listener:
        if uri.host in self.hub.listeners:
            raise OSError(f"mem://{uri.host} is already listening")
        self.hub.listeners[uri.host] = new_link
        return _MemoryListener(self.hub, uri.host)
