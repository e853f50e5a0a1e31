"""A client for the control API, used by the CLI, the chat TUI and the call page.

One connection carries calls and events at once. A reader task (owned by the client,
cancelled by :meth:`ControlClient.close`) reads every line the node sends and routes it:
a reply goes to the caller waiting for its id, an event goes to the subscription's
queue. So calls may run concurrently from many tasks, and a subscriber keeps calling
on the same connection while events arrive; neither replies nor events are dropped.

    async with await ControlClient.connect(path) as client:
        status = await client.call("status")
        events = client.subscribe(["chat.", "peer."])
        await events.start()          # subscribed from here on: fetch state, then read
        async for event in events:
            ...

The node bounds what it queues for a slow subscriber (see docs/control-api.md): when
its queue overflows the subscriber receives one ``events.lagged`` event with the
number dropped, and can re-sync with calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from core.control.protocol import LineDecoder, ProtocolError, encode
from core.errors import MeshError, UsageError
from core.tasks import within

__all__ = ["ControlClient", "EventStream", "NodeNotRunning"]

READ_CHUNK = 65536


class NodeNotRunning(MeshError):
    """No node answers on the control socket."""


_CLOSED = object()  # end-of-stream marker in the event queue


class ControlClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._decoder = LineDecoder()
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self._subscribed = False
        self._closed_reason: str | None = None
        self._read_task: asyncio.Task[None] = asyncio.get_running_loop().create_task(
            self._read_loop(), name="control-client-reader"
        )

    @classmethod
    async def connect(cls, path: Path, timeout: float = 5.0) -> ControlClient:
        try:
            reader, writer = await within(
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

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    async def close(self) -> None:
        self._read_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._read_task
        self._finish("the control connection was closed")
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    # -- reading ----------------------------------------------------------------------
    async def _read_loop(self) -> None:
        reason = "the node closed the control connection"
        try:
            while data := await self._reader.read(READ_CHUNK):
                try:
                    messages = self._decoder.feed(data)
                except ProtocolError as exc:
                    reason = f"the node sent a malformed reply: {exc}"
                    return
                for message in messages:
                    self._route(message)
        except (ConnectionError, OSError) as exc:
            reason = f"the control connection failed: {exc}"
        finally:
            self._finish(reason)

    def _route(self, message: dict[str, Any]) -> None:
        if "event" in message:
            if self._subscribed:
                self._events.put_nowait(message)
            return
        rid = message.get("id")
        future = self._waiting.pop(rid, None) if isinstance(rid, int) else None
        if future is None:
            if rid is None and "error" in message:  # a refusal of the whole connection
                self._fail_all(_error(message.get("error")))
            return
        if future.done():
            return
        if "error" in message:
            future.set_exception(_error(message["error"]))
        else:
            future.set_result(message.get("result"))

    def _fail_all(self, exc: MeshError) -> None:
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(exc)

    def _finish(self, reason: str) -> None:
        if self._closed_reason is not None:
            return
        self._closed_reason = reason
        self._fail_all(MeshError(reason))
        self._events.put_nowait(_CLOSED)

    # -- calls and events -------------------------------------------------------------
    async def call(self, method: str, **params: Any) -> Any:
        """Call ``method``; its result, or :class:`UsageError` / :class:`MeshError`."""
        if self._closed_reason is not None:
            raise MeshError(self._closed_reason)
        rid = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        try:
            self._writer.write(encode({"id": rid, "method": method, "params": params}))
            await self._writer.drain()
            return await future
        except (ConnectionError, OSError) as exc:
            raise MeshError(f"the control connection failed: {exc}") from None
        finally:
            self._waiting.pop(rid, None)

    def subscribe(self, prefixes: Sequence[str] | None = None) -> EventStream:
        """Events whose kind starts with one of ``prefixes`` (every event without), until
        the node goes away; calls keep working on this client meanwhile. Iterate it with
        ``async for``; ``await stream.start()`` first to know the node has subscribed
        (then fetch the state the events will update, and miss nothing)."""
        return EventStream(self, tuple(prefixes or ()))

    def events(self) -> EventStream:
        """Every event, until the node goes away (``subscribe()`` without a filter)."""
        return self.subscribe(None)

    async def _start_events(self, prefixes: tuple[str, ...]) -> None:
        self._subscribed = True
        await self.call("subscribe", prefixes=list(prefixes))

    async def _next_event(self) -> dict[str, Any]:
        item = await self._events.get()
        if item is _CLOSED:
            self._events.put_nowait(_CLOSED)  # later readers end too
            raise StopAsyncIteration
        return cast(dict[str, Any], item)


class EventStream:
    """An async iterator of event objects (``{"event": kind, "data": {...}}``)."""

    def __init__(self, client: ControlClient, prefixes: tuple[str, ...]) -> None:
        self._client = client
        self._prefixes = prefixes
        self._started = False

    async def start(self) -> None:
        if not self._started:
            self._started = True
            await self._client._start_events(self._prefixes)

    async def aclose(self) -> None:
        """Stop taking events on this client (the node's side ends with the connection)."""
        self._client._subscribed = False

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if not self._started:
            try:
                await self.start()
            except MeshError:
                raise StopAsyncIteration from None
        return await self._client._next_event()


def _error(err: Any) -> MeshError:
    err = err if isinstance(err, dict) else {}
    message = str(err.get("message", "unknown error"))
    if err.get("code") == "bad_request":
        return UsageError(message)
    return MeshError(message)
