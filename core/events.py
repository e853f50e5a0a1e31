"""Fan-out of node events to any number of subscribers, each with a bounded queue."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from core.types import NodeEvent

__all__ = ["EventBus", "Subscription"]

log = logging.getLogger(__name__)


class Subscription:
    """One subscriber's queue. A subscriber that falls behind loses the oldest events
    and is told how many with a ``events.lagged`` event, instead of growing memory.

    ``prefixes`` filters by kind (``("chat.", "peer.")``); empty means every event.
    ``events.lagged`` always passes."""

    def __init__(self, maxsize: int, prefixes: tuple[str, ...] = ()) -> None:
        self._queue: asyncio.Queue[NodeEvent | None] = asyncio.Queue(maxsize)
        self._dropped = 0
        self.prefixes = prefixes

    @property
    def dropped(self) -> int:
        """Events dropped and not yet reported."""
        return self._dropped

    def wants(self, kind: str) -> bool:
        return not self.prefixes or kind.startswith(self.prefixes)

    def _put(self, event: NodeEvent | None) -> None:
        while True:
            try:
                self._queue.put_nowait(event)
                return
            except asyncio.QueueFull:
                self._queue.get_nowait()
                self._dropped += 1

    async def get(self) -> NodeEvent | None:
        """The next event, or None once the bus is closed."""
        if self._dropped:
            dropped, self._dropped = self._dropped, 0
            return NodeEvent("events.lagged", {"dropped": dropped})
        return await self._queue.get()

    def __aiter__(self) -> AsyncIterator[NodeEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[NodeEvent]:
        while (event := await self.get()) is not None:
            yield event


class EventBus:
    def __init__(self, queue_size: int = 1000) -> None:
        self._subs: set[Subscription] = set()
        self._queue_size = queue_size
        self._closed = False

    def publish(self, event: NodeEvent) -> None:
        log.debug("event %s %s", event.kind, event.data)
        for sub in self._subs:
            if sub.wants(event.kind):
                sub._put(event)

    @asynccontextmanager
    async def subscribe(self, prefixes: tuple[str, ...] = ()) -> AsyncIterator[Subscription]:
        sub = Subscription(self._queue_size, prefixes)
        if self._closed:
            sub._put(None)
        self._subs.add(sub)
        try:
            yield sub
        finally:
            self._subs.discard(sub)

    def close(self) -> None:
        self._closed = True
        for sub in self._subs:
            sub._put(None)
