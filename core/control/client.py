"""A client for the control API, used by the CLI and the chat TUI."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any

from core.control.protocol import LineDecoder, ProtocolError, encode
from core.errors import MeshError, UsageError

__all__ = ["ControlClient", "NodeNotRunning"]


class NodeNotRunning(MeshError):
    """No node answers on the control socket."""


class ControlClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._decoder = LineDecoder()
        self._pending: list[dict[str, Any]] = []
        self._ids = itertools.count(1)

    @classmethod
    async def connect(cls, path: Path, timeout: float = 5.0) -> ControlClient:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(path), limit=1 << 21), timeout
            )
        except (FileNotFoundError, ConnectionRefusedError):
            raise NodeNotRunning(
                f"no node is running for this data dir (no answer on {path}); start one "
                "with `mesh up`"
            ) from None
        except PermissionError:
            raise MeshError(f"no permission to use {path}: it belongs to another user") from None
        except TimeoutError:
            raise NodeNotRunning(f"the node at {path} did not answer") from None
        return cls(reader, writer)

    async def __aenter__(self) -> ControlClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    async def _next_message(self) -> dict[str, Any]:
        while not self._pending:
            data = await self._reader.read(65536)
            if not data:
                raise MeshError("the node closed the control connection")
            try:
                self._pending.extend(self._decoder.feed(data))
            except ProtocolError as exc:
                raise MeshError(f"the node sent a malformed reply: {exc}") from None
        return self._pending.pop(0)

    async def call(self, method: str, **params: Any) -> Any:
        rid = next(self._ids)
        self._writer.write(encode({"id": rid, "method": method, "params": params}))
        await self._writer.drain()
        while True:
            reply = await self._next_message()
            if reply.get("id") != rid:
                continue
            if "error" in reply:
                err = reply["error"] or {}
                message = str(err.get("message", "unknown error"))
                if err.get("code") == "bad_request":
                    raise UsageError(message)
                raise MeshError(message)
            return reply.get("result")

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Subscribe and yield events until the node goes away."""
        await self.call("subscribe")
        while True:
            try:
                message = await self._next_message()
            except MeshError:
                return
            if "event" in message:
                yield message
