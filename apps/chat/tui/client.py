"""The UI's only way to the node: control API calls plus a filtered event stream.

`ChatClient` is a thin layer over core's `ControlClient`. The UI never opens a
database; everything it shows comes from these calls and events.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from core.control.client import ControlClient

__all__ = ["EVENT_PREFIXES", "ChatBackend", "ChatClient"]

EVENT_PREFIXES = ("chat.", "contact.", "peer.", "call.", "events.")


class ChatBackend(Protocol):
    """What the app needs from a node connection."""

    async def call(self, method: str, **params: Any) -> Any: ...

    def events(self) -> AsyncIterator[dict[str, Any]]: ...

    async def close(self) -> None: ...


class ChatClient:
    """Calls and events over the control socket of one node.

    With a control client that multiplexes (``subscribe(prefixes)``) one connection
    carries both; with an older one, events come on a second connection and are
    filtered here, and calls are serialised (that client reads replies inline).
    """

    def __init__(
        self, control: ControlClient, path: Path, prefixes: Sequence[str] = EVENT_PREFIXES
    ) -> None:
        self._control = control
        self._path = path
        self._prefixes = tuple(prefixes)
        self._multiplexed = hasattr(control, "subscribe")
        self._lock = asyncio.Lock()
        self._event_client: ControlClient | None = None

    @classmethod
    async def connect(cls, path: Path, timeout: float = 5.0) -> ChatClient:
        return cls(await ControlClient.connect(path, timeout), path)

    async def call(self, method: str, **params: Any) -> Any:
        if self._multiplexed:
            return await self._control.call(method, **params)
        async with self._lock:
            return await self._control.call(method, **params)

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        if self._multiplexed:
            stream = self._control.subscribe(list(self._prefixes))
            async for event in stream:
                yield event
            return
        self._event_client = await ControlClient.connect(self._path)
        async for event in self._event_client.events():
            if str(event.get("event", "")).startswith(self._prefixes):
                yield event

    async def close(self) -> None:
        if self._event_client is not None:
            with contextlib.suppress(Exception):
                await self._event_client.close()
        await self._control.close()
