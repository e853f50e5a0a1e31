"""Kernel UDP endpoints handed out as :class:`asyncio.DatagramTransport`.

The :class:`core.backend.Backend` contract returns an ``asyncio.DatagramTransport``, and
the node checks for one. On Python 3.11 the selector event loop's UDP transport does not
derive from ``asyncio.DatagramTransport`` (it has the methods, not the base class), so
:class:`DatagramAdapter` gives the application protocol a thin :class:`KernelDatagram`
proxy instead whenever the loop's own transport fails that check.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["DatagramAdapter", "KernelDatagram"]


class KernelDatagram(asyncio.DatagramTransport):
    """Delegates every call to the loop's UDP transport."""

    def __init__(self, inner: asyncio.BaseTransport) -> None:
        super().__init__()
        self._inner: Any = inner  # the loop's transport: DatagramTransport's methods

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        self._inner.sendto(data, addr)

    def abort(self) -> None:
        self._inner.abort()

    def close(self) -> None:
        self._inner.close()

    def is_closing(self) -> bool:
        return bool(self._inner.is_closing())

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._inner.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._inner.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        protocol: asyncio.BaseProtocol = self._inner.get_protocol()
        return protocol

    def get_write_buffer_size(self) -> int:
        return int(self._inner.get_write_buffer_size())

    def get_write_buffer_limits(self) -> tuple[int, int]:
        low, high = self._inner.get_write_buffer_limits()
        return int(low), int(high)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._inner.set_write_buffer_limits(high, low)


class DatagramAdapter(asyncio.DatagramProtocol):
    """Sits between the loop's transport and the application's protocol."""

    def __init__(self, inner: asyncio.DatagramProtocol) -> None:
        self.inner = inner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.DatagramTransport):
            self.transport = transport
        else:
            self.transport = KernelDatagram(transport)
        self.inner.connection_made(self.transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.inner.datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.inner.error_received(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()
