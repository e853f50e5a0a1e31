"""The control server: a method registry served on a 0600 Unix socket.

Methods are ``async handler(params) -> JSON-able``. Raising :class:`UsageError` gives
``bad_request``, :class:`MeshError` gives ``failed``; anything else is logged and
answered ``internal``. ``subscribe`` (with optional kind ``prefixes``) adds an event
stream to the connection; calls go on beside it (see docs/control-api.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from core.control.protocol import MAX_LINE, LineDecoder, ProtocolError, encode, parse_request
from core.errors import MeshError, UsageError
from core.events import EventBus
from core.tasks import within

__all__ = ["ControlServer", "Handler", "StreamHandler", "reply_line"]

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
# A stream handler takes over the connection: it answers the request itself (one
# result/error line) and then speaks raw bytes (`mesh connect`, `mesh listen`).
StreamHandler = Callable[
    [Any, dict[str, Any], asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]
]
MAX_CLIENTS = 64
MAX_INFLIGHT = 32  # calls answered concurrently on one connection


class ControlServer:
    def __init__(self, path: Path, events: EventBus) -> None:
        self.path = path
        self._events = events
        self._methods: dict[str, Handler] = {}
        self._streams: dict[str, StreamHandler] = {}
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    def register(self, name: str, handler: Handler) -> None:
        if name in self._methods or name == "subscribe":
            raise ValueError(f"control method {name!r} is already registered")
        self._methods[name] = handler

    def register_stream(self, name: str, handler: StreamHandler) -> None:
        if name in self._methods or name in self._streams:
            raise ValueError(f"control method {name!r} is already registered")
        self._streams[name] = handler

    @property
    def methods(self) -> list[str]:
        return sorted([*self._methods, *self._streams, "subscribe"])

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.path.exists() or self.path.is_symlink():
            if await _socket_answers(self.path):
                raise MeshError(
                    f"another node already runs with this data dir (control socket {self.path})"
                )
            self.path.unlink()
        old_umask = os.umask(0o177)  # the socket is born 0600: no window for others
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
            # only the socket we bound: a start() refused because another node answers
            # on this path must leave that node's socket alone (issue 14)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._clients) >= MAX_CLIENTS:
            writer.write(encode({"error": {"code": "busy", "message": "too many clients"}}))
            writer.close()
            return
        self._clients.add(task)
        try:
            await self._session(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read requests; answer calls concurrently (at most MAX_INFLIGHT at once); a
        ``subscribe`` starts an event pump beside them on the same connection."""
        decoder = LineDecoder()
        session = _Session(writer)
        try:
            while data := await reader.read(65536):
                try:
                    messages = decoder.feed(data)
                except ProtocolError as exc:
                    writer.write(encode({"error": {"code": "bad_request", "message": str(exc)}}))
                    return
                for message in messages:
                    try:
                        request = parse_request(message)
                    except ProtocolError as exc:
                        writer.write(
                            encode({"id": message.get("id"), "error": _err("bad_request", exc)})
                        )
                        continue
                    stream = self._streams.get(request.method)
                    if stream is not None:
                        await session.quiesce()
                        try:
                            await stream(request.id, request.params, reader, writer)
                        except UsageError as exc:
                            writer.write(
                                encode({"id": request.id, "error": _err("bad_request", exc)})
                            )
                        except (MeshError, OSError) as exc:
                            writer.write(encode({"id": request.id, "error": _err("failed", exc)}))
                        return
                    if request.method == "subscribe":
                        try:
                            prefixes = _prefixes(request.params)
                        except UsageError as exc:
                            writer.write(
                                encode({"id": request.id, "error": _err("bad_request", exc)})
                            )
                            continue
                        writer.write(encode({"id": request.id, "result": {"subscribed": True}}))
                        session.subscribe(self._events, prefixes)
                        continue
                    await session.spawn(self._answer(request.id, request.method,
                                                     request.params, writer))  # fmt: skip
                if writer.transport.is_closing():
                    return
        finally:
            await session.close()

    async def _answer(
        self, rid: Any, method: str, params: dict[str, Any], writer: asyncio.StreamWriter
    ) -> None:
        reply = await self._call(rid, method, params)
        if writer.transport.is_closing():
            return
        line = encode(reply)
        if len(line) > MAX_LINE:  # a client could not read it: say so, keep the connection
            log.warning("control method %s: reply of %d bytes not sent", method, len(line))
            line = encode(
                {
                    "id": rid,
                    "error": _err(
                        "too_large",
                        f"the reply to {method} is {len(line)} bytes, over the {MAX_LINE}-byte "
                        "line limit: ask for less (limit, paging)",
                    ),
                }
            )
        writer.write(line)
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    async def _call(self, rid: Any, method: str, params: dict[str, Any]) -> dict[str, Any]:
        handler = self._methods.get(method)
        if handler is None:
            return {"id": rid, "error": _err("unknown_method", f"no method {method!r}")}
        try:
            return {"id": rid, "result": await handler(params)}
        except UsageError as exc:
            return {"id": rid, "error": _err("bad_request", exc)}
        except MeshError as exc:
            return {"id": rid, "error": _err("failed", exc)}
        except (TypeError, ValueError, KeyError) as exc:
            return {"id": rid, "error": _err("bad_request", f"bad params for {method}: {exc}")}
        except Exception:
            log.exception("control method %s failed", method)
            return {"id": rid, "error": _err("internal", f"{method} failed; see the node's log")}


class _Session:
    """One connection's tasks: calls in flight (bounded) and at most one event pump.

    Memory per connection is bounded: the subscription queue drops its oldest events
    beyond the bus's queue size (the subscriber then gets ``events.lagged``), and the
    pump waits for the socket to drain before writing more, so the write buffer holds
    at most about one high-water mark of events plus the replies in flight.
    """

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._calls: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_INFLIGHT)
        self._pump: asyncio.Task[None] | None = None
        self._prefixes: list[tuple[str, ...]] = []

    async def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        await self._slots.acquire()  # reading stops while MAX_INFLIGHT calls run
        task = asyncio.get_running_loop().create_task(work)
        self._calls.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._calls.discard(t)
            self._slots.release()

        task.add_done_callback(done)

    def subscribe(self, events: EventBus, prefixes: tuple[str, ...]) -> None:
        if self._pump is not None:  # a second subscribe replaces the filter
            self._pump.cancel()
        self._pump = asyncio.get_running_loop().create_task(
            self._stream(events, prefixes), name="control-events"
        )

    async def _stream(self, events: EventBus, prefixes: tuple[str, ...]) -> None:
        async with events.subscribe(prefixes) as sub:
            async for event in sub:
                if self._writer.transport.is_closing():
                    return
                self._writer.write(encode(event.to_json()))
                try:
                    await self._writer.drain()
                except ConnectionError:
                    return

    async def quiesce(self) -> None:
        """Let calls in flight answer before a stream handler takes the connection."""
        if self._calls:
            await asyncio.gather(*self._calls, return_exceptions=True)
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
            self._pump = None

    async def close(self) -> None:
        tasks = [*self._calls, *([self._pump] if self._pump else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _prefixes(params: dict[str, Any]) -> tuple[str, ...]:
    raw = params.get("prefixes") or []
    if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
        raise UsageError("subscribe: 'prefixes' must be a list of strings (event-kind prefixes)")
    if len(raw) > 64:
        raise UsageError("subscribe: at most 64 prefixes")
    return tuple(raw)


def reply_line(rid: Any, result: Any) -> bytes:
    return encode({"id": rid, "result": result})


def _err(code: str, message: object) -> dict[str, str]:
    return {"code": code, "message": str(message)}


async def _socket_answers(path: Path) -> bool:
    try:
        if not stat.S_ISSOCK(path.lstat().st_mode):
            return False
        _, writer = await within(asyncio.open_unix_connection(str(path)), 2)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True
