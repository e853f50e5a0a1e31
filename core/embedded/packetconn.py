"""The encrypted PacketConn (ironwood ``encrypted/packetconn.go``) over a PacketNetwork.

:class:`EncryptedPacketConn` is the thin asyncio adapter around the sans-IO
:class:`~core.embedded.session.SessionManager`: packets from the routed network go in,
its ``Transmit`` events go to ``network.send``, its ``Deliver`` events go to the handler
(or, without one, to a bounded queue read by :meth:`read_from`). Addresses are Ed25519
public keys. The MTU is the network's minus ``sessionTrafficOverhead`` (79 bytes), as
``PacketConn.MTU`` computes it. One owned task expires idle sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

from core.embedded.session import (
    SESSION_TRAFFIC_OVERHEAD,
    Deliver,
    SessionConfig,
    SessionManager,
    SessionStats,
    Transmit,
)
from core.tasks import cancel_and_wait, within

__all__ = [
    "ClosedError",
    "EncryptedPacketConn",
    "NetworkLike",
    "OversizedMessageError",
]

log = logging.getLogger(__name__)

EXPIRE_INTERVAL = 5.0


class NetworkLike(Protocol):
    """What the encrypted layer needs of the routed network (``network.PacketConn``)."""

    public_key: bytes
    mtu: int

    def set_handler(self, handler: Callable[[bytes, bytes], None]) -> None: ...

    def send(self, dest_key: bytes, payload: bytes) -> None: ...

    def send_lookup(self, target_key: bytes) -> None: ...


class OversizedMessageError(ValueError):
    """``types.ErrOversizedMessage``."""


class ClosedError(ConnectionError):
    """``types.ErrClosed``."""


class EncryptedPacketConn:
    """ReadFrom/WriteTo of end-to-end encrypted datagrams addressed by Ed25519 key."""

    def __init__(
        self,
        network: NetworkLike,
        seed: bytes,
        *,
        config: SessionConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
        read_queue: int = 1024,
    ) -> None:
        self.network = network
        self.sessions_manager = SessionManager(
            seed, clock=clock, wallclock=wallclock, config=config
        )
        self._handler: Callable[[bytes, bytes], None] | None = None
        self._session_up: Callable[[bytes], None] | None = None
        self._queue: asyncio.Queue[tuple[bytes, bytes]] = asyncio.Queue(read_queue)
        self._flushing = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._timer_changed = asyncio.Event()  # a retry may be due sooner than the loop sleeps
        self.dropped_reads = 0
        network.set_handler(self._on_network_packet)

    @property
    def public_key(self) -> bytes:
        return self.network.public_key

    @property
    def mtu(self) -> int:
        """``PacketConn.MTU``: largest payload :meth:`write_to` accepts."""
        return int(self.network.mtu) - SESSION_TRAFFIC_OVERHEAD

    def set_handler(self, handler: Callable[[bytes, bytes], None] | None) -> None:
        """Deliver ``(source_key, payload)`` to ``handler`` instead of the read queue."""
        self._handler = handler

    def set_session_up_handler(self, handler: Callable[[bytes], None] | None) -> None:
        """Call ``handler(remote_key)`` when a packet opens a session with that key."""
        self._session_up = handler

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._timer_loop(), name="embedded-sessions")

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            await cancel_and_wait(self._task, what="the packet connection's timers")
            self._task = None

    def write_to(self, payload: bytes, dest_key: bytes) -> int:
        """``WriteTo``: encrypt ``payload`` for ``dest_key`` (sets a session up if needed)."""
        if self._closed:
            raise ClosedError("the encrypted PacketConn is closed")
        if len(dest_key) != 32:
            raise ValueError(f"destination must be a 32-byte Ed25519 key, got {len(dest_key)}")
        if len(payload) > self.mtu:
            raise OversizedMessageError(
                f"{len(payload)}-byte message exceeds the session MTU of {self.mtu} bytes"
            )
        dest_key, payload = bytes(dest_key), bytes(payload)
        manager = self.sessions_manager
        # The fast path: an established session, nothing queued before this packet.
        data = None if self._flushing or manager.pending else manager.seal(dest_key, payload)
        if data is not None:
            self._transmit(dest_key, data)
            return len(payload)
        manager.write_to(dest_key, payload)
        self._flush()
        manager.take_opened()  # only a received packet opens a session
        return len(payload)

    async def read_from(self) -> tuple[bytes, bytes]:
        """``ReadFrom``: the next ``(payload, source_key)`` (when no handler is set)."""
        if self._closed:
            raise ClosedError("the encrypted PacketConn is closed")
        source, payload = await self._queue.get()
        return payload, source

    def sessions(self) -> list[SessionStats]:
        return self.sessions_manager.sessions()

    def _on_network_packet(self, source: bytes, payload: bytes) -> None:
        if self._closed:
            return
        manager = self.sessions_manager
        message = manager.receive(source, payload)
        if message is not None:
            if self._flushing or manager.pending:
                manager.handle_opened(source, message)  # behind what is queued, in order
            else:
                self._deliver(source, message)  # the fast path: traffic in a session
        self._flush()
        # A session opened, or was re-opened because the remote node restarted: it is
        # reachable (again). After the flush, so what the packet answered is on its way.
        for key in self.sessions_manager.take_opened():
            if self._session_up is not None:
                self._session_up(key)
        if self.sessions_manager.next_retry() is not None:
            self._timer_changed.set()

    def _flush(self) -> None:
        # Handlers may write (an echo reply); the outer loop then picks those up in order.
        if self._flushing:
            return
        self._flushing = True
        try:
            while (event := self.sessions_manager.next_event()) is not None:
                if isinstance(event, Transmit):
                    self._transmit(event.dest, event.data)
                elif isinstance(event, Deliver):
                    self._deliver(event.source, event.data)
        finally:
            self._flushing = False

    def _transmit(self, dest: bytes, data: bytes) -> None:
        try:
            self.network.send(dest, data)
        except (ValueError, RuntimeError) as exc:
            log.debug("network refused a session packet for %s: %s", dest.hex()[:16], exc)

    def _deliver(self, source: bytes, data: bytes) -> None:
        if self._handler is not None:
            try:
                self._handler(source, data)
            except Exception:
                log.exception("session payload handler raised; payload dropped")
            return
        try:
            self._queue.put_nowait((source, data))
        except asyncio.QueueFull:
            self.dropped_reads += 1

    async def _timer_loop(self) -> None:
        expire_at = time.monotonic() + EXPIRE_INTERVAL
        while True:
            now = time.monotonic()
            if now >= expire_at:
                self.sessions_manager.expire()
                expire_at = now + EXPIRE_INTERVAL
            self.sessions_manager.retry()
            self._flush()
            wake = expire_at
            retry_at = self.sessions_manager.next_retry()
            if retry_at is not None:
                # The manager's clock may not be time.monotonic (tests): sleep the gap.
                wake = min(wake, now + max(0.0, retry_at - self.sessions_manager.now()))
            self._timer_changed.clear()
            with contextlib.suppress(TimeoutError):
                await within(self._timer_changed.wait(), max(0.01, wake - now))
