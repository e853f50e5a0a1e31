"""Helpers shared by the carrier tests: embedded networks, bounded waits."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl as ssl_module
from collections.abc import AsyncIterator, Callable

from core.embedded import NetworkConfig, PacketNetwork


def hostport(uri: str) -> tuple[str, int]:
    """``scheme://[host]:port[/path]`` → (host, port)."""
    host, port = uri.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)
    return host.strip("[]"), int(port)


async def until(check: Callable[[], object], timeout: float = 10.0) -> None:
    """Until ``check()`` is true, polling every 20 ms; AssertionError after ``timeout``."""
    for _ in range(int(timeout / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


@contextlib.asynccontextmanager
async def nets(count: int, **config: float) -> AsyncIterator[list[PacketNetwork]]:
    """``count`` started networks with ``config`` (closed on exit)."""
    made = [
        PacketNetwork(os.urandom(32), config=NetworkConfig(**config))  # type: ignore[arg-type]
        for _ in range(count)
    ]
    for net in made:
        await net.start()
    try:
        yield made
    finally:
        for net in made:
            await net.close()


def up(net: PacketNetwork) -> list[bytes]:
    """The keys ``net`` has a link up with."""
    return [p.key for p in net.peers() if p.up and p.key is not None]


class Relay:
    """A TCP relay for carrier tests: a TLS-terminating reverse proxy (``ssl``) in front
    of ``backend``, or an HTTP CONNECT proxy (``backend`` None: the target comes from the
    request; ``answer`` is what it replies). Every connection it holds is closed and
    every handler awaited by :meth:`close`, so nothing outlives the test's loop."""

    def __init__(
        self,
        backend: tuple[str, int] | None = None,
        *,
        ssl: ssl_module.SSLContext | None = None,
        answer: bytes = b"HTTP/1.1 200 Connection established\r\n\r\n",
    ) -> None:
        self.backend = backend
        self.ssl = ssl
        self.answer = answer
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
        for writer in self._writers:
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(w)
        try:
            target = self.backend
            if target is None:
                head = await r.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                w.write(self.answer)
                if not self.answer.startswith(b"HTTP/1.1 200"):
                    return
                host, port = head.split(b" ")[1].decode().rsplit(":", 1)
                target = (host.strip("[]"), int(port))
            br, bw = await asyncio.open_connection(*target)
            self._writers.append(bw)
            await asyncio.gather(_pipe(r, bw), _pipe(br, w))
        except (ConnectionError, asyncio.IncompleteReadError, ssl_module.SSLError):
            pass
        finally:
            w.close()
            self._tasks.discard(task)


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    dst.close()
