"""The asyncio adapter: sockets in, :class:`ImapSession` in the middle, sockets out.

One :class:`ImapServer` owns its listening socket and every connection task; ``close()``
stops listening, ends each connection and waits for its tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ..store import MailStore
from .session import Authenticator, ImapSession

__all__ = ["DEFAULT_PORT", "ImapServer", "start_imap_server"]

log = logging.getLogger(__name__)

DEFAULT_PORT = 1143
READ_SIZE = 64 * 1024
# RFC 3501 section 5.4: an inactivity autologout timer must be at least 30 minutes.
AUTOLOGOUT_SECONDS = 31 * 60
MAX_CONNECTIONS = 64  # one person's mail clients; bounds what a runaway local program can take


class ImapServer:
    def __init__(
        self,
        store: MailStore,
        authenticator: Authenticator,
        *,
        username: str,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.store = store
        self.authenticator = authenticator
        self.username = username
        self.max_connections = max_connections
        self.server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def start(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> asyncio.Server:
        self.server = await asyncio.start_server(self._handle, host, port)
        for sock in self.server.sockets:
            log.info("IMAP listening on %s", sock.getsockname())
        return self.server

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening, end every connection and wait until its handler has finished."""
        if self.server is not None:
            self.server.close()
        connections = dict(self._connections)
        for writer in connections.values():
            writer.transport.abort()  # the reader sees EOF and the handler unwinds itself
        if connections:
            _, pending = await asyncio.wait(connections, timeout=5)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if self.server is not None:
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername")
        if len(self._connections) >= self.max_connections:
            log.warning("IMAP: refusing %s, %d connections open", peer, len(self._connections))
            writer.write(b"* BYE too many connections, close some mail clients\r\n")
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            return
        self._connections[task] = writer

        async def write(data: bytes) -> None:
            writer.write(data)
            async with asyncio.timeout(AUTOLOGOUT_SECONDS):  # a client that stops reading
                await writer.drain()

        session = ImapSession(self.store, self.authenticator, self.username, write)
        # This handler owns the notifier task: it cancels and awaits it before returning.
        notifier = asyncio.create_task(_notify_loop(session), name=f"imap-notify {peer}")
        try:
            await write(session.greeting())
            await _read_loop(reader, session)
        except (ConnectionError, TimeoutError) as exc:
            log.debug("IMAP connection %s ended: %s", peer, exc)
        except Exception:  # one broken session must not take the listener down
            log.exception("IMAP session %s failed; connection closed", peer)
        finally:
            notifier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await notifier
            session.detach()
            self._connections.pop(task, None)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def _read_loop(reader: asyncio.StreamReader, session: ImapSession) -> None:
    """Feed the session; a client that hangs up cancels the command it left running.

    The next read runs while a command is handled: EOF then cancels the command (a
    login waiting its turn in the node's LoginThrottle must not be checked for a client
    that is gone); data read meanwhile is fed once the command is done.
    """
    read: asyncio.Future[bytes] | None = None
    work: asyncio.Future[None] | None = None
    try:
        while not session.finished:
            if read is None:
                read = asyncio.ensure_future(reader.read(READ_SIZE))
            async with asyncio.timeout(AUTOLOGOUT_SECONDS):
                data = await read
            read = None
            if not data:
                return
            work = asyncio.ensure_future(session.receive_data(data))
            read = asyncio.ensure_future(reader.read(READ_SIZE))
            await asyncio.wait({work, read}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done() and read.done() and not read.exception() and not read.result():
                work.cancel()  # EOF while the command runs
            try:
                await work
            except asyncio.CancelledError:
                if not work.cancelled() or not read.done():
                    raise  # we were cancelled ourselves
                return
    finally:
        for task in (work, read):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await task


async def _notify_loop(session: ImapSession) -> None:
    """Push mailbox changes to an idling client as the store reports them."""
    try:
        while True:
            await session.wakeup.wait()
            session.wakeup.clear()
            await session.on_wakeup()
    except ConnectionError:
        return  # the read loop sees the closed connection too
    except Exception:
        log.exception("IMAP IDLE update failed")


async def start_imap_server(
    store: MailStore,
    authenticator: Authenticator,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    username: str,
) -> asyncio.Server:
    """Listen for IMAP clients (loopback by default); close the returned server to stop.

    Prefer :class:`ImapServer` when connections must also be ended on shutdown: closing an
    ``asyncio.Server`` only stops accepting new ones.
    """
    return await ImapServer(store, authenticator, username=username).start(host, port)
