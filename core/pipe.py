"""Copying bytes between two streams, both ways, with half-close and bounded buffers."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["CHUNK", "pipe_both_ways"]

CHUNK = 64 * 1024


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    total = 0
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            total += len(data)
            await writer.drain()  # back-pressure: never more than the transport's high water
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.transport.abort()
    return total


async def pipe_both_ways(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> tuple[int, int]:
    """Copy a→b and b→a until both directions end; close both. Returns byte counts."""
    try:
        async with asyncio.TaskGroup() as tg:
            ab = tg.create_task(_copy(a[0], b[1]))
            ba = tg.create_task(_copy(b[0], a[1]))
        return ab.result(), ba.result()
    finally:
        for _, writer in (a, b):
            writer.close()
        for _, writer in (a, b):
            with contextlib.suppress(Exception):
                await writer.wait_closed()
