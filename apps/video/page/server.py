"""The call page: a browser tab on ``http://127.0.0.1:PORT/`` served by the node's call
service (aiohttp), a part of that service, started and closed by it.

- Listens on ``127.0.0.1`` only (``[video] page = "127.0.0.1:PORT"``, 0 picks a port;
  ``page = "off"`` serves nothing).
- Every request needs the token: ``?token=`` in the URL (``mesh call page`` prints it)
  sets an HttpOnly, SameSite=Strict cookie and redirects to the same page without it;
  a request with neither gets 403 (static files and the WebSocket alike). The Host
  header must name ``127.0.0.1:PORT`` (or ``localhost:PORT``) and an Origin, when sent,
  the same: a DNS-rebound name is refused. A WebSocket upgrade must carry that Origin
  (browsers always send one): another page, even on another port of 127.0.0.1, whose
  requests carry the cookie (the same site), cannot open ``/ws``.
- Every response forbids framing (CSP ``frame-ancestors 'none'``, ``X-Frame-Options:
  DENY``): no other page can lay the call page under its own and steal a click.
- Only a person's click on the page places, answers or rejects a call: ``?call=KEY``
  (what ``mesh call page CONTACT`` prints) only preselects whom to call. See
  docs/security.md, "The call page".
- ``/ws``: one WebSocket per page. The page sends ``offer`` (its WebRTC leg, see
  :mod:`apps.video.page.bridge`), ``place``, ``answer``, ``reject``, ``hangup``,
  ``update`` and ``refresh``; the node sends ``hello`` (state, contacts, call log),
  ``answer`` (SDP), every ``call.*`` event, a ``stats`` line each second in a call, and
  ``error``. Peer mesh addresses and candidates are removed from all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from apps.video.call import CallOptions
from apps.video.page.bridge import Bridge, Feed
from apps.video.page.lazy import parse_page_setting
from core import MeshError, UsageError

if TYPE_CHECKING:
    from apps.video.service import CallService

__all__ = ["PageServer", "parse_page_setting", "scrub"]

log = logging.getLogger(__name__)

MAX_PAGES = 8  # WebSockets open at once
MAX_MESSAGE = 128 * 1024
STATIC = {"call.css": "text/css", "call.js": "text/javascript"}
HIDDEN = ("address", "local_candidates", "remote_candidates", "dropped_candidates")
STATS_EVERY = 1.0
# On every response: no page may frame this one (clickjacking), no type sniffing.
FRAMING = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "frame-ancestors 'none'",
}
INDEX_CSP = (
    "default-src 'self'; img-src 'self' data:; media-src 'self' blob: mediastream:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'; "
    "object-src 'none'"
)


def scrub(value: Any) -> Any:
    """``value`` without the peer's mesh address or any candidate: what the page sees."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if k not in HIDDEN}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


class _Page:
    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.bridge = Bridge()
        self.placed = False
        self.watching: str | None = None  # a call placed elsewhere its person chose to watch
        self.relay_said: tuple[str, bool] | None = None

    async def send(self, message: dict[str, Any]) -> None:
        if self.ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str(json.dumps(message, default=str))


class PageServer:
    def __init__(
        self,
        service: CallService,
        port: int,
        *,
        token: str | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        self.service = service
        self.wanted_port = port
        self.port = 0
        self.token = token or secrets.token_urlsafe(32)
        self._sock = sock  # already bound and listening (LazyPage), else bind wanted_port
        self.pages: set[_Page] = set()
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._shown: str | None = None  # the call whose remote tracks the pages get
        self._page_calls: deque[str] = deque(maxlen=16)  # placed or answered on a page
        # What a page's call sends of the browser: feeds that outlive the page, so a
        # reloaded (or another) page takes over the same call.
        self._sending: dict[str, Feed] = {}

    # -- lifecycle ----------------------------------------------------------------------
    @property
    def cookie(self) -> str:
        return f"mesh_call_{self.port}"  # cookies ignore ports: one name per page server

    @property
    def url(self) -> str:
        """The page's address without the token (what ``mesh status`` shows)."""
        return f"http://127.0.0.1:{self.port}/"

    def url_with_token(self, call: str | None = None) -> str:
        extra = f"&call={call}" if call else ""
        return f"{self.url}?token={self.token}{extra}"

    async def start(self) -> None:
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_MESSAGE)
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/ws", self._websocket)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site: web.BaseSite
            if self._sock is not None:
                site = web.SockSite(runner, self._sock)
            else:
                site = web.TCPSite(runner, "127.0.0.1", self.wanted_port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        self._own(self._watch_events())
        self._own(self._stats_loop())
        log.info("call page on %s", self.url)

    async def set_token(self, token: str) -> None:
        """A new token: the pages open on the old one are closed (their cookie is void)."""
        self.token = token
        for page in list(self.pages):
            with contextlib.suppress(Exception):
                await page.ws.close(code=4001, message=b"the page's token was replaced")

    async def close(self) -> None:
        for feed in self._sending.values():
            feed.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for page in list(self.pages):
            with contextlib.suppress(Exception):
                await page.ws.close()
            await page.bridge.close()
        self.pages.clear()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def _own(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the guard ----------------------------------------------------------------------
    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            response = await self._checked(request, handler)
        except web.HTTPException as refused:  # 404 and the like: framed the same way
            for name, value in FRAMING.items():
                refused.headers.setdefault(name, value)
            raise
        if not response.prepared:  # a WebSocket's headers are already sent
            for name, value in FRAMING.items():
                response.headers.setdefault(name, value)
        return response

    async def _checked(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        hosts = (f"127.0.0.1:{self.port}", f"localhost:{self.port}")
        if request.headers.get("Host") not in hosts:
            return web.Response(status=403, text="forbidden: wrong Host\n")
        origin = request.headers.get("Origin")
        origins = tuple(f"http://{h}" for h in hosts)
        if origin is not None and origin not in origins:
            return web.Response(status=403, text="forbidden: wrong Origin\n")
        if request.path == "/ws" and origin is None:
            return web.Response(status=403, text="forbidden: a WebSocket needs its Origin\n")
        given = request.query.get("token")
        if given is not None and hmac.compare_digest(given.encode(), self.token.encode()):
            if request.path == "/":  # set the cookie, drop the token from the address bar
                rest = "&".join(f"{k}={v}" for k, v in request.query.items() if k != "token")
                response = web.Response(
                    status=303, headers={"Location": "/" + (f"?{rest}" if rest else "")}
                )
                response.set_cookie(
                    self.cookie, self.token, httponly=True, samesite="Strict", path="/"
                )
                return response
            return await handler(request)
        cookie = request.cookies.get(self.cookie, "")
        if not hmac.compare_digest(cookie.encode(), self.token.encode()):
            return web.Response(status=403, text="forbidden: open the URL mesh call page prints\n")
        return await handler(request)

    # -- files --------------------------------------------------------------------------
    @staticmethod
    def _file(name: str) -> bytes:
        return resources.files("apps.video.page").joinpath("static", name).read_bytes()

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=self._file("index.html"),
            content_type="text/html",
            headers={
                "Cache-Control": "no-store",
                "Content-Security-Policy": INDEX_CSP,
                "Referrer-Policy": "no-referrer",
            },
        )

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        return web.Response(body=self._file(name), content_type=STATIC[name])

    # -- the WebSocket --------------------------------------------------------------------
    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if len(self.pages) >= MAX_PAGES:
            return web.Response(status=503, text=f"at most {MAX_PAGES} call pages at once\n")
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, heartbeat=20.0)
        await ws.prepare(request)
        page = _Page(ws)
        self.pages.add(page)
        try:
            await page.send(await self._hello())
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    break
                await self._message(page, msg.data)
        finally:
            self.pages.discard(page)
            await page.bridge.close()
        return ws

    async def _message(self, page: _Page, data: str) -> None:
        try:
            message = json.loads(data)
            if not isinstance(message, dict):
                raise UsageError("a page message is a JSON object")
            await self._op(page, str(message.get("op")), message)
        except (UsageError, MeshError, ValueError) as exc:
            await page.send({"type": "error", "message": str(exc)})
        except Exception as exc:  # aiortc refusing a mangled SDP, say: the page is told
            log.info("call page: %s failed: %s", data[:40], exc, exc_info=True)
            await page.send({"type": "error", "message": f"the node could not do that: {exc}"})
            if page.bridge.pc is not None and page.bridge.pc.connectionState != "connected":
                await page.bridge.close()  # a half-made leg: the page may offer again
                page.bridge = Bridge()

    async def _op(self, page: _Page, op: str, message: dict[str, Any]) -> None:
        service = self.service
        methods = service.control_methods()
        if op == "offer":
            answer = await page.bridge.answer(str(message.get("sdp", "")))
            await page.send({"type": "answer", "sdp": answer})
            self._show_current()
            self._take_over(page)
        elif op == "place":
            contact = message.get("contact")
            if not isinstance(contact, str) or not contact:
                raise UsageError("place needs a contact")
            call = await service.place(contact, self._options(page, message))
            self._page_call(call.id)
            page.placed = True
            await page.send({"type": "placed", "call": scrub(call.to_json())})
        elif op == "answer":
            params = {"id": message.get("id")} if message.get("id") else {}
            answered = await service.answer_with(params, self._options(page, message))
            self._page_call(str(answered.get("id")))
            self._show_current()
        elif op in ("reject", "hangup"):
            params = {"id": message["id"]} if message.get("id") else {}
            await methods[f"call.{op}"](params)
        elif op == "update":
            await self._update(page, message)
        elif op == "refresh":
            await page.send(await self._hello())
        elif op == "watch":  # a call placed elsewhere (the CLI): its person wants it here
            page.watching = str(message.get("id") or "")
            self._show_current()
        else:
            raise UsageError(f"unknown page operation {op!r}")

    def _options(self, page: _Page, message: dict[str, Any]) -> CallOptions:
        source = message.get("source")
        tracks: dict[str, Feed] = {}
        if source in (None, "browser"):
            for feed in self._sending.values():
                feed.stop()  # the last call's
            self._sending = {}
            for kind, track in page.bridge.local_tracks().items():
                feed = Feed(kind, filler=True)
                feed.feed(track)
                tracks[kind] = feed
            self._sending = dict(tracks)
        return CallOptions(
            source=str(source) if source and source != "browser" else "testsrc",
            audio_only=bool(message.get("audio_only", False)),
            tracks=tracks,
        )

    def _take_over(self, page: _Page) -> None:
        """A page that connects during a call whose page went away sends its browser's
        tracks into that call in their place."""
        if self.service.current() is None or not self._sending:
            return
        fresh = page.bridge.local_tracks()
        for kind, feed in self._sending.items():
            if feed.source is None and kind in fresh:
                feed.feed(fresh.pop(kind))
        for track in fresh.values():
            track.stop()

    async def _update(self, page: _Page, message: dict[str, Any]) -> None:
        params: dict[str, Any] = {
            k: message[k] for k in ("audio_muted", "video_off") if k in message
        }
        source = message.get("source")
        if source == "browser":
            call = self.service.current()
            if call is None:
                raise UsageError("no call in progress")
            tracks = page.bridge.local_tracks()
            if "video" not in tracks:
                raise UsageError("the browser gives no camera")
            feeds = {kind: self._sending.get(kind) or Feed(kind, filler=True) for kind in tracks}
            for kind, feed in feeds.items():
                feed.feed(tracks[kind])
            self._sending.update(feeds)
            call.update(tracks=dict(feeds))
        elif source:
            params["source"] = str(source)
        if params:
            await self.service.control_methods()["call.update"](params)

    async def _hello(self) -> dict[str, Any]:
        service = self.service
        node = service.node
        status = await service.control_methods()["call.status"]({"stats": False})
        contacts: list[dict[str, Any]] = []
        lister = getattr(service.contacts, "list", None)
        if lister is not None:
            with contextlib.suppress(Exception):
                contacts = [c.to_json() for c in await lister()]
        recent = await service.log.recent(20) if service.log is not None else []
        aliases = {c["key"]: c.get("alias") for c in contacts}
        for row in recent:
            row.setdefault("alias", aliases.get(str(row.get("peer"))))
        return {
            "type": "hello",
            "self": {"key": node.key.hex(), "name": service.config.name},
            "state": scrub(status),
            "contacts": scrub(contacts),
            "log": scrub(recent),
        }

    # -- what the node tells the pages --------------------------------------------------
    async def _broadcast(self, message: dict[str, Any]) -> None:
        for page in list(self.pages):
            await page.send(message)

    def _show_current(self) -> None:
        """Give every page the remote tracks of the call in progress (or none)."""
        call = self.service.current()
        sink = call.sink if call is not None else None
        if call is None or sink is None or not sink.tracks:
            if self._shown is not None:
                self._shown = None
                for page in self.pages:
                    page.bridge.show({"audio": None, "video": None})
            return
        for page in self.pages:
            if page.bridge.pc is None:
                continue
            current = page.bridge.remote["video"].source or page.bridge.remote["audio"].source
            # A call placed or answered on a page plays on every page; one placed
            # elsewhere (`mesh call`) only where its person asked: relaying video to a
            # tab nobody watches costs the call CPU, frames and latency.
            wanted = call.id in self._page_calls or page.watching == call.id
            said = (call.id, wanted)
            if page.relay_said != said:
                page.relay_said = said
                self._own(page.send({"type": "relay", "id": call.id, "on": wanted}))
            if not wanted:
                if current is not None:
                    page.bridge.show({"audio": None, "video": None})
                continue
            if self._shown == call.id and current is not None:
                continue
            page.bridge.show({kind: sink.subscribe(kind) for kind in ("audio", "video")})
        self._shown = call.id

    def _page_call(self, call_id: str) -> None:
        self._page_calls.append(call_id)

    async def _watch_events(self) -> None:
        async with self.service.node.events.subscribe(("call.",)) as sub:
            async for event in sub:
                if event.kind in ("call.state", "call.ended"):
                    self._show_current()
                if event.kind == "call.ended" and self.service.current() is None:
                    for feed in self._sending.values():
                        feed.stop()
                    self._sending = {}
                await self._broadcast(
                    {"type": "event", "event": event.kind, "data": scrub(event.data)}
                )

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(STATS_EVERY)
            call = self.service.current()
            if call is None or not self.pages or call.state.value != "active":
                continue
            self._show_current()
            with contextlib.suppress(Exception):
                stats = await call.stats()
                await self._broadcast({"type": "stats", "id": call.id, "stats": stats})
