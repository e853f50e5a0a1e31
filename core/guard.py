"""The trust boundary for mesh services.

Every connection accepted on a mesh service passes through :class:`GuardProtocol`:
a peer outside ``200::/7`` is refused before the service sees a byte, and the peer's
full key (from the backend's authenticated mapping) is attached to the transport as
``get_extra_info("peer_key")`` before the service's ``connection_made`` runs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from core.address import is_mesh_address
from core.backend import ProtocolFactory
from core.tasks import within

__all__ = ["GuardProtocol", "KeyedTransport", "peer_address"]

log = logging.getLogger(__name__)

KeyResolver = Callable[[ipaddress.IPv6Address], Awaitable[bytes | None]]
KEY_LOOKUP_TIMEOUT = 5.0


def peer_address(transport: asyncio.BaseTransport) -> ipaddress.IPv6Address | None:
    """The remote IPv6 address of a transport, or None if it has none."""
    peer = transport.get_extra_info("peername")
    if not peer:
        return None
    try:
        addr = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
    except ValueError:
        return None
    return addr if isinstance(addr, ipaddress.IPv6Address) else None


class KeyedTransport(asyncio.Transport):
    """A transport that adds ``peer_key`` (bytes or None) to the wrapped one's extra info."""

    def __init__(self, inner: asyncio.Transport, peer_key: bytes | None) -> None:
        super().__init__({"peer_key": peer_key})
        self._inner = inner
        self._peer_key = peer_key

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peer_key":
            return self._peer_key
        return self._inner.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    def close(self) -> None:
        self._inner.close()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._inner.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._inner.get_protocol()

    def is_reading(self) -> bool:
        return self._inner.is_reading()

    def pause_reading(self) -> None:
        self._inner.pause_reading()

    def resume_reading(self) -> None:
        self._inner.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._inner.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._inner.get_write_buffer_limits()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._inner.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self._inner.writelines(list_of_data)

    def write_eof(self) -> None:
        self._inner.write_eof()

    def can_write_eof(self) -> bool:
        return self._inner.can_write_eof()

    def abort(self) -> None:
        self._inner.abort()


class GuardProtocol(asyncio.Protocol):
    """Checks the peer, resolves its key, then hands the connection to the service.

    Reading is paused while the key is looked up, so the service sees every byte.
    The look-up task is owned here and cancelled if the connection drops first.
    """

    def __init__(self, factory: ProtocolFactory, resolve: KeyResolver, service: str) -> None:
        self._factory = factory
        self._resolve = resolve
        self._service = service
        self._inner: asyncio.Protocol | None = None
        self._task: asyncio.Task[None] | None = None
        self._transport: asyncio.Transport | None = None
        self.admitted: asyncio.Future[tuple[asyncio.Transport, asyncio.Protocol]] = (
            asyncio.get_running_loop().create_future()
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        addr = peer_address(transport)
        if addr is None or not is_mesh_address(addr):
            log.warning(
                "%s: refused connection from %s: not a mesh (200::/7) address",
                self._service,
                transport.get_extra_info("peername"),
            )
            transport.abort()
            if not self.admitted.done():
                self.admitted.set_exception(
                    ConnectionRefusedError(f"{self._service}: peer is not a mesh address")
                )
                self.admitted.exception()  # retrieved: an inbound refusal has no waiter
            return
        transport.pause_reading()
        self._task = asyncio.get_running_loop().create_task(self._admit(transport, addr))

    async def _admit(self, transport: asyncio.Transport, addr: ipaddress.IPv6Address) -> None:
        try:
            key = await within(self._resolve(addr), KEY_LOOKUP_TIMEOUT)
        except Exception as exc:  # the backend could not say: admit without a key
            log.info("%s: no key for %s (%s)", self._service, addr, exc)
            key = None
        if transport.is_closing():
            if not self.admitted.done():
                self.admitted.set_exception(ConnectionResetError(f"{self._service}: closed"))
                self.admitted.exception()
            return
        inner = self._factory()
        if not isinstance(inner, asyncio.Protocol):
            transport.abort()
            raise TypeError("a mesh stream service needs an asyncio.Protocol")
        self._inner = inner
        keyed = KeyedTransport(transport, key)
        transport.set_protocol(inner)
        inner.connection_made(keyed)
        if not self.admitted.done():
            self.admitted.set_result((keyed, inner))
        if not transport.is_closing():
            transport.resume_reading()

    # Until the service takes over, the guard is the transport's protocol.
    def data_received(self, data: bytes) -> None:  # pragma: no cover - reading is paused
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if not self.admitted.done():
            self.admitted.set_exception(exc or ConnectionResetError("connection lost"))
            self.admitted.exception()  # retrieved: nobody may be waiting (inbound)
        if self._inner is not None:
            self._inner.connection_lost(exc)
