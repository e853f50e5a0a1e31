"""The control server: a method registry served on a 0600 Unix socket.

Methods are ``async handler(params) -> JSON-able``. Raising :class:`UsageError` gives
``bad_request``, :class:`MeshError` gives ``failed``; anything else is logged and
answered ``internal``. ``subscribe`` turns the connection into an event stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from core.control.protocol import LineDecoder, ProtocolError, encode, parse_request
from core.errors import MeshError, UsageError
from core.events import EventBus

__all__ = ["ControlServer", "Handler", "StreamHandler", "reply_line"]

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
# A stream handler takes over the connection: it answers the request itself (one
# result/error line) and then speaks raw bytes (`mesh connect`, `mesh listen`).
StreamHandler = Callable[
    [Any, dict[str, Any], asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]
]
MAX_CLIENTS = 64
WRITE_HIGH_WATER = 4 << 20


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
        decoder = LineDecoder()
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
                    try:
                        await stream(request.id, request.params, reader, writer)
                    except UsageError as exc:
                        writer.write(encode({"id": request.id, "error": _err("bad_request", exc)}))
                    except (MeshError, OSError) as exc:
                        writer.write(encode({"id": request.id, "error": _err("failed", exc)}))
                    return
                if request.method == "subscribe":
                    writer.write(encode({"id": request.id, "result": {"subscribed": True}}))
                    await self._stream_events(writer)
                    return
                writer.write(encode(await self._call(request.id, request.method, request.params)))
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

    async def _stream_events(self, writer: asyncio.StreamWriter) -> None:
        async with self._events.subscribe() as sub:
            async for event in sub:
                writer.write(encode(event.to_json()))
                if writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
                    log.warning("control subscriber is not reading; dropping it")
                    return
                await writer.drain()


def reply_line(rid: Any, result: Any) -> bytes:
    return encode({"id": rid, "result": result})


def _err(code: str, message: object) -> dict[str, str]:
    return {"code": code, "message": str(message)}


async def _socket_answers(path: Path) -> bool:
    try:
        if not stat.S_ISSOCK(path.lstat().st_mode):
            return False
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 2)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True
