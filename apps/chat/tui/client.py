"""The UI's only way to the node: control API calls plus one filtered event stream,
both on one connection (core's `ControlClient`). The UI never opens a database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from core import ControlClient

__all__ = ["EVENT_PREFIXES", "ChatBackend", "ChatClient"]

EVENT_PREFIXES = ("chat.", "contact.", "peer.", "call.", "events.")


class ChatBackend(Protocol):
    """What the app needs from a node connection."""

    async def call(self, method: str, **params: Any) -> Any: ...

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        """Events from now on: returns once the node has subscribed us, so state
        fetched afterwards misses no update."""
        ...

    async def close(self) -> None: ...


class ChatClient:
    def __init__(self, control: ControlClient, prefixes: Sequence[str] = EVENT_PREFIXES) -> None:
        self._control = control
        self._prefixes = list(prefixes)

    @classmethod
    async def connect(cls, path: Path, timeout: float = 5.0) -> ChatClient:
        return cls(await ControlClient.connect(path, timeout))

    async def call(self, method: str, **params: Any) -> Any:
        return await self._control.call(method, **params)

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        stream = self._control.subscribe(self._prefixes)
        await stream.start()
        return stream

    async def close(self) -> None:
        await self._control.close()
