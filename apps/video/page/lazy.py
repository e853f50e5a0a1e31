"""The call page's socket, bound when the call service starts; the page server itself
(aiohttp, :mod:`apps.video.page.server`, and through it aiortc) is imported and started
only when the first browser connects.

An idle node keeps neither aiohttp nor aiortc in memory, yet the page's address and
token are known from the start (``mesh status``, ``mesh call page``): the listening
socket holds the first connection in its backlog until the server accepts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import UsageError

if TYPE_CHECKING:
    from apps.video.page.server import PageServer, _Page
    from apps.video.service import CallService

__all__ = ["PAGE_FILE", "LazyPage", "parse_page_setting"]

log = logging.getLogger(__name__)

BACKLOG = 64
# The page's port and token, kept per data dir (0600) so that a bookmarked page and a
# reload work after the node restarts; ``mesh call page --new-token`` replaces the token.
PAGE_FILE = "call-page.json"


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` whole (a temporary file renamed), mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(json.dumps(data))
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, path)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def parse_page_setting(text: str) -> int | None:
    """The port of ``[video] page`` (``127.0.0.1:PORT``), None for ``off``."""
    value = str(text).strip()
    if value in ("off", "", "no", "false"):
        return None
    host, sep, port = value.rpartition(":")
    if not sep or host != "127.0.0.1" or not port.isdigit() or not 0 <= int(port) < 65536:
        raise UsageError('[video] page must be "127.0.0.1:PORT" (0 picks a port) or "off"')
    return int(port)


class LazyPage:
    """The call page as the service sees it: bound at :meth:`start`, served from the
    first connection on, closed by :meth:`close`."""

    def __init__(self, service: CallService, port: int, state: Path | None = None) -> None:
        self.service = service
        self.wanted_port = port
        self.port = 0
        self.state = state  # PAGE_FILE: the port and token kept across restarts
        kept = _load(state) if state is not None else {}
        token = kept.get("token")
        self.token = token if isinstance(token, str) and len(token) >= 32 else new_token()
        self._kept_port = kept.get("port") if isinstance(kept.get("port"), int) else None
        self.server: PageServer | None = None
        self._sock: socket.socket | None = None
        self._starting: asyncio.Task[None] | None = None

    @property
    def cookie(self) -> str:
        """The name of the page's session cookie (the server's, see PageServer.cookie)."""
        return f"mesh_call_{self.port}"

    @property
    def url(self) -> str:
        """The page's address without the token (what ``mesh status`` shows)."""
        return f"http://127.0.0.1:{self.port}/"

    def url_with_token(self, call: str | None = None) -> str:
        extra = f"&call={call}" if call else ""
        return f"{self.url}?token={self.token}{extra}"

    @property
    def pages(self) -> set[_Page]:
        """The pages open now (none before the first connection)."""
        return self.server.pages if self.server is not None else set()

    async def start(self) -> None:
        sock = None
        if self.wanted_port == 0 and self._kept_port:  # the page's address of last time
            try:
                sock = _listen(self._kept_port)
            except OSError as exc:
                log.warning("call page: port %d is taken (%s): a new one", self._kept_port, exc)
        sock = sock or _listen(self.wanted_port)
        self._sock = sock
        self.port = int(sock.getsockname()[1])
        self._keep()
        asyncio.get_running_loop().add_reader(sock.fileno(), self._first_connection)
        log.info("call page on %s", self.url)

    def _keep(self) -> None:
        if self.state is not None:
            _save(self.state, {"port": self.port, "token": self.token})

    async def new_token(self) -> str:
        """Replace the token (kept): every open page and old link stops working."""
        self.token = new_token()
        self._keep()
        if self.server is not None:
            await self.server.set_token(self.token)
        return self.token

    def _first_connection(self) -> None:
        assert self._sock is not None
        asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._starting = asyncio.ensure_future(self._serve(self._sock))

    async def _serve(self, sock: socket.socket) -> None:
        from apps.video.page.server import PageServer

        server = PageServer(self.service, self.port, token=self.token, sock=sock)
        try:
            await server.start()
        except Exception:
            log.exception("the call page could not start; it is off until the node restarts")
            self._close_socket()
            return
        self.server = server

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()

    async def close(self) -> None:
        task, self._starting = self._starting, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        server, self.server = self.server, None
        if server is not None:
            await server.close()
        self._close_socket()
