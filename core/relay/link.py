"""Relay frames over one asyncio stream: write a message, read the next, each bounded in time.

The protocol itself is sans-IO (:mod:`core.relay.wire`); this is the thin I/O edge both the
relay's server and its clients use.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from core.relay.wire import MAX_FRAME, FrameDecoder, Message, WireError, encode

__all__ = ["ByteBudget", "FrameStream"]

READ_CHUNK = 256 * 1024


class ByteBudget:
    """Bytes of unfinished frames all the server's streams may buffer at once: many
    peers trickling large frames cannot grow memory past ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used = max(0, self.used - n)


class FrameStream:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        timeout: float,
        max_frame: int = MAX_FRAME,
        budget: ByteBudget | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self._decoder = FrameDecoder(max_frame)
        self._ready: deque[Message] = deque()
        self._budget = budget
        self._held = 0  # of the budget, for what the decoder buffers

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
                self._reserve(self._decoder.buffered + len(data))
                self._ready.extend(self._decoder.feed(data))
                self._reserve(self._decoder.buffered)
        return self._ready.popleft()

    def _reserve(self, size: int) -> None:
        if self._budget is None:
            return
        if size > self._held:
            if not self._budget.take(size - self._held):
                raise WireError("too much is arriving at once; try again later")
        else:
            self._budget.give(self._held - size)
        self._held = size

    async def close(self) -> None:
        self._reserve(0)
        with contextlib.suppress(Exception):
            self.writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await self.writer.wait_closed()
