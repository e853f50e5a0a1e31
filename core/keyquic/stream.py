"""One QUIC stream as an asyncio transport, so stream protocols (aiosmtpd, StreamReader) run on it.

The connection (:class:`core.keyquic.endpoint.KeyQuicEndpoint`'s) owns the QUIC state;
a :class:`QuicStreamTransport` only forwards: ``write`` queues stream data and flushes
the connection, ``write_eof`` sends FIN, ``abort`` resets the stream, ``close`` sends
FIN and tells the protocol the stream is over. Flow control both ways:

* writing pauses the protocol (``pause_writing``) while more than ``write_high`` bytes
  are sent but not acknowledged, and resumes it below ``write_low``;
* QUIC credit is handed out as data arrives, so a protocol that pauses reading makes
  this transport hold data instead; holding more than ``max_held`` bytes resets the
  stream (a peer cannot grow a paused reader's buffer without bound).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

__all__ = ["QuicStreamTransport", "StreamOwner"]

log = logging.getLogger(__name__)

WRITE_HIGH = 256 * 1024
WRITE_LOW = 64 * 1024
MAX_HELD = 4 * 1024 * 1024
ERROR_CLOSED = 0x0  # stream reset / stop-sending code: the application closed it
ERROR_OVERRUN = 0x1  # held more than max_held while paused


class StreamOwner(Protocol):
    """What a stream needs of its connection."""

    def stream_send(self, stream_id: int, data: bytes, end_stream: bool) -> None: ...
    def stream_reset(self, stream_id: int, error_code: int) -> None: ...
    def stream_stop(self, stream_id: int) -> None: ...
    def stream_unacked(self, stream_id: int) -> int: ...
    def stream_done(self, stream_id: int) -> None: ...


class QuicStreamTransport(asyncio.Transport):
    def __init__(
        self,
        owner: StreamOwner,
        stream_id: int,
        protocol: asyncio.BaseProtocol,
        extra: dict[str, Any],
        *,
        write_high: int = WRITE_HIGH,
        write_low: int = WRITE_LOW,
        max_held: int = MAX_HELD,
    ) -> None:
        super().__init__(extra)
        self._owner = owner
        self.stream_id = stream_id
        self._protocol = protocol
        self._write_high = write_high
        self._write_low = write_low
        self._max_held = max_held
        self._closing = False
        self._eof_sent = False
        self._eof_received = False
        self._lost = False
        self._paused_reading = False
        self._paused_writing = False
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._held_eof = False

    # -- asyncio.Transport ---------------------------------------------------------------
    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def is_closing(self) -> bool:
        return self._closing or self._lost

    def is_reading(self) -> bool:
        return not self._paused_reading and not self._lost

    def pause_reading(self) -> None:
        self._paused_reading = True

    def resume_reading(self) -> None:
        if not self._paused_reading:
            return
        self._paused_reading = False
        held, self._held, self._held_bytes = self._held, [], 0
        for chunk in held:
            if self._lost or self._paused_reading:
                self._hold(chunk)
                continue
            self._deliver(chunk)
        if self._held_eof and not self._paused_reading and not self._held:
            self._held_eof = False
            self._deliver_eof()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof_sent or self._lost:
            raise ConnectionResetError("the QUIC stream is closed for writing")
        if not data:
            return
        self._owner.stream_send(self.stream_id, bytes(data), False)
        self.check_write_pressure()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._eof_sent or self._lost:
            return
        self._eof_sent = True
        self._owner.stream_send(self.stream_id, b"", True)
        self._maybe_done()

    def get_write_buffer_size(self) -> int:
        return 0 if self._lost else self._owner.stream_unacked(self.stream_id)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._write_low, self._write_high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._write_high = WRITE_HIGH if high is None else high
        self._write_low = self._write_high // 4 if low is None else low

    def close(self) -> None:
        """FIN our side, stop reading; the protocol hears ``connection_lost(None)`` soon."""
        if self._closing or self._lost:
            return
        self._closing = True
        self.write_eof()
        if not self._eof_received:
            # Nothing more is read from this stream: tell the peer to stop sending.
            self._owner.stream_stop(self.stream_id)
        self._lose(None)

    def abort(self) -> None:
        if self._lost:
            return
        self._closing = True
        self._owner.stream_reset(self.stream_id, ERROR_CLOSED)
        self._lose(None)

    # -- fed by the connection ---------------------------------------------------------------
    def data_received(self, data: bytes, end_stream: bool) -> None:
        if self._lost:
            return
        if data:
            if self._paused_reading or self._held:
                self._hold(data)
            else:
                self._deliver(data)
        if end_stream:
            if self._paused_reading or self._held:
                self._held_eof = True
            else:
                self._deliver_eof()

    def reset_received(self, error: Exception) -> None:
        """The peer reset the stream or the connection ended: the protocol hears it."""
        self._lose(error)

    def check_write_pressure(self) -> None:
        if self._lost:
            return
        size = self._owner.stream_unacked(self.stream_id)
        if not self._paused_writing and size > self._write_high:
            self._paused_writing = True
            self._call("pause_writing")
        elif self._paused_writing and size <= self._write_low:
            self._paused_writing = False
            self._call("resume_writing")

    # -- internals -------------------------------------------------------------------------
    def _hold(self, data: bytes) -> None:
        self._held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes > self._max_held:
            log.info(
                "quic stream %d: peer sent %d bytes to a paused reader; reset",
                self.stream_id,
                self._held_bytes,
            )
            self._owner.stream_reset(self.stream_id, ERROR_OVERRUN)
            self._lose(ConnectionResetError("the peer overran a paused QUIC stream"))

    def _deliver(self, data: bytes) -> None:
        receive = getattr(self._protocol, "data_received", None)
        if receive is not None:
            receive(data)

    def _deliver_eof(self) -> None:
        self._eof_received = True
        eof = getattr(self._protocol, "eof_received", None)
        keep_open = eof() if eof is not None else False
        if not keep_open:
            self.close()
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self._eof_sent and self._eof_received and not self._lost:
            self._lose(None)

    def _lose(self, error: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._held.clear()
        self._held_bytes = 0
        self._owner.stream_done(self.stream_id)
        asyncio.get_running_loop().call_soon(self._protocol.connection_lost, error)

    def _call(self, name: str) -> None:
        method = getattr(self._protocol, name, None)
        if method is None:
            return
        try:
            method()
        except Exception:
            log.exception("quic stream %d: protocol %s raised", self.stream_id, name)
