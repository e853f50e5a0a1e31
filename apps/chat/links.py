"""Outgoing chat streams: one cached stream per destination node, frames written back to
back and their acks read in order (asyncio adapter over :class:`ChatConnection`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from apps.chat.connection import AckReceived, ChatConnection, ProtocolFault, RemoteError
from apps.chat.wire import Ack
from core import address_for_key, within

__all__ = ["LinkError", "Links"]

log = logging.getLogger(__name__)


class Dialer(Protocol):
    async def open_connection(
        self, host: Any, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]: ...


class LinkError(Exception):
    """The stream to the peer failed (connect, write, read, timeout, protocol)."""


@dataclass
class _Link:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    conn: ChatConnection = field(default_factory=ChatConnection)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class Links:
    def __init__(
        self,
        node: Dialer,
        port: int,
        *,
        connect_timeout: float = 15.0,
        ack_timeout: float = 30.0,
        max_links: int = 64,
    ) -> None:
        self.node = node
        self.port = port
        self.connect_timeout = connect_timeout
        self.ack_timeout = ack_timeout
        self.max_links = max_links
        self._links: OrderedDict[bytes, _Link] = OrderedDict()

    async def exchange(self, dest: bytes, frames: Sequence[tuple[bytes, bytes]]) -> list[Ack]:
        """Send ``(envelope bytes, id)`` pairs pipelined; their acks, in order. A cached
        stream that turns out dead (the peer closed it while idle) is replaced once at
        once; any other failure drops the stream and raises LinkError (the caller
        retries them all; the receiver answers ``replay`` for what it already has)."""
        for fresh in (False, True):
            link, reused = await self._link(dest, fresh=fresh)
            async with link.lock:
                try:
                    return await within(self._run(link, frames), self.ack_timeout)
                except (OSError, EOFError, TimeoutError, LinkError, RuntimeError) as exc:
                    self._drop(dest, link)
                    if not reused or isinstance(exc, TimeoutError):
                        raise LinkError(str(exc) or type(exc).__name__) from None
        raise LinkError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _run(self, link: _Link, frames: Sequence[tuple[bytes, bytes]]) -> list[Ack]:
        link.writer.write(b"".join(link.conn.send_envelope(raw, id_) for raw, id_ in frames))
        await link.writer.drain()
        acks: list[Ack] = []
        while len(acks) < len(frames):
            data = await link.reader.read(65536)
            if not data:
                raise LinkError("the peer closed the stream")
            for event in link.conn.receive_data(data):
                if isinstance(event, AckReceived):
                    acks.append(event.ack)
                elif isinstance(event, RemoteError):
                    raise LinkError(f"the peer refused the stream: {event.error.reason}")
                elif isinstance(event, ProtocolFault):
                    raise LinkError(f"the peer broke the protocol: {event.reason}")
        return acks

    async def send_only(self, dest: bytes, raw: bytes, id_: bytes) -> None:
        """One envelope on a stream of its own, ack awaited briefly (typing notices)."""
        reader, writer = await within(
            self.node.open_connection(address_for_key(dest), self.port), self.connect_timeout
        )
        link = _Link(reader, writer)
        try:
            await within(self._run(link, [(raw, id_)]), 5.0)
        finally:
            link.close()

    async def _link(self, dest: bytes, *, fresh: bool = False) -> tuple[_Link, bool]:
        """The stream to ``dest`` and whether it is a cached one."""
        link = None if fresh else self._links.get(dest)
        if link is not None and not link.writer.is_closing() and not link.reader.at_eof():
            self._links.move_to_end(dest)
            return link, True
        try:
            reader, writer = await within(
                self.node.open_connection(address_for_key(dest), self.port),
                self.connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            raise LinkError(f"cannot reach {dest.hex()[:16]}…: {exc or 'timed out'}") from None
        link = _Link(reader, writer)
        old = self._links.pop(dest, None)
        if old is not None:
            old.close()
        self._links[dest] = link
        while len(self._links) > self.max_links:
            _, evicted = self._links.popitem(last=False)
            evicted.close()
        return link, False

    def _drop(self, dest: bytes, link: _Link) -> None:
        link.close()
        if self._links.get(dest) is link:
            del self._links[dest]

    def close_link(self, dest: bytes) -> None:
        link = self._links.pop(dest, None)
        if link is not None:
            link.close()

    async def close(self) -> None:
        links = list(self._links.values())
        self._links.clear()
        for link in links:
            link.close()
        for link in links:
            with contextlib.suppress(Exception):
                await within(link.writer.wait_closed(), 2.0)
