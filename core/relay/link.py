"""Relay frames over one asyncio stream: write a message, read the next, each bounded in time.

The protocol itself is sans-IO (:mod:`core.relay.wire`); this is the thin I/O edge both the
relay's server and its clients use.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from core.relay.wire import MAX_FRAME, FrameDecoder, Message, WireError, encode

__all__ = ["FrameStream"]

READ_CHUNK = 256 * 1024


class FrameStream:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        timeout: float,
        max_frame: int = MAX_FRAME,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self._decoder = FrameDecoder(max_frame)
        self._ready: deque[Message] = deque()

    async def send(self, msg: Message) -> None:
        self.writer.write(encode(msg))
        async with asyncio.timeout(self.timeout):
            await self.writer.drain()

    async def receive(self, timeout: float | None = None) -> Message | None:
        """The next message; None at a clean end of stream. Raises WireError on garbage,
        TimeoutError when nothing whole arrives within ``timeout`` (default: the stream's)."""
        async with asyncio.timeout(self.timeout if timeout is None else timeout):
            while not self._ready:
                data = await self.reader.read(READ_CHUNK)
                if not data:
                    if self._decoder.buffered:
                        raise WireError("the stream ended inside a frame")
                    return None
                self._ready.extend(self._decoder.feed(data))
        return self._ready.popleft()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await self.writer.wait_closed()
