"""The mail service inside the node process: mesh SMTP, submission, IMAP, queue runner.

``create_service(node, config, data_dir)`` is the ``meshsuite.services`` entry point.
``start()`` refuses to run without a mail password (run ``mesh mail passwd``): an MTA
that let any password through is how mail gets stolen on a shared machine.

With the embedded backend the service also takes and sends Yggmail's mail
(``<key>@yggmail``): it opens the node's QUIC-by-key endpoint (core's yggquic
counterpart) and runs one SMTP session per stream a Yggmail node opens. Under the daemon
backend that transport does not exist; ``yggmail_unavailable`` says why and submission
refuses ``@yggmail`` recipients with that reason.

Owned here and released in reverse order by ``close()``: the queue runner task
(cancelled and awaited), the QUIC endpoint, the three servers and their open
connections, the queue database and the mail store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from aiosmtpd.smtp import SMTP

from core import (
    MAIL_DOMAIN,
    NO_KEY_DATAGRAMS,
    YGGMAIL_DOMAIN,
    ConnectionLimiter,
    KeyQuicConfig,
    MeshError,
    MeshServer,
    PeerRateLimiter,
    within,
)

from .config import MailConfig
from .imap import ImapServer
from .inbound import MeshInboundHandler
from .passwords import PasswordVerifier
from .queue import OUTBOX_FILE_NAME, OutboxQueue
from .runner import QueueRunner
from .smtp_server import MeshSMTP, YggmailSMTP
from .store import MailStore
from .submission import SubmissionHandler

__all__ = ["MAIL_STORE_FILE_NAME", "MailService", "create_service"]

log = logging.getLogger(__name__)

MAIL_STORE_FILE_NAME = "mail.db"
SMTP_IDENT = "meshsuite ESMTP"
CLOSE_TIMEOUT = 5.0
COMMANDS_PER_CONNECTION = 1000


class _Closable(Protocol):
    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


class MailNode(Protocol):
    """The part of :class:`core.node.Node` the mail service uses."""

    @property
    def key(self) -> bytes: ...

    async def create_server(
        self, protocol_factory: Callable[[], asyncio.BaseProtocol], port: int
    ) -> MeshServer: ...

    async def open_connection(
        self, address: Any, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]: ...

    @property
    def events(self) -> Any: ...

    @property
    def key_datagrams_supported(self) -> bool: ...

    async def open_key_quic(
        self, stream_factory: Callable[[bytes], Any], config: Any = None
    ) -> Any: ...


class MailService:
    def __init__(self, node: MailNode, config: MailConfig, data_dir: Path) -> None:
        from core import MailAddress

        self.node = node
        self.config = config
        self.data_dir = data_dir
        self.own = MailAddress(node.key)
        self.store: MailStore | None = None
        self.queue: OutboxQueue | None = None
        self.runner: QueueRunner | None = None
        self.submission_port: int | None = None
        self.imap_port: int | None = None
        self._servers: list[_Closable] = []
        self._connections: weakref.WeakSet[SMTP] = weakref.WeakSet()
        self._runner_task: asyncio.Task[None] | None = None
        self._imap: ImapServer | None = None
        self._quic: Any = None  # core's KeyQuicEndpoint, when the backend carries it
        self._inbound_handlers: list[MeshInboundHandler] = []
        self.yggmail_unavailable: str | None = None

    async def start(self) -> None:
        # No password, no mail service (raises, saying to run `mesh mail passwd`).
        verifier = PasswordVerifier.from_data_dir(self.data_dir, str(self.own))
        try:
            await self._start(verifier)
        except BaseException:
            await self.close()
            raise
        log.info(
            "mail: %s; mesh SMTP port %d, submission %s:%s, IMAP %s:%s",
            self.own,
            self.config.mesh_port,
            self.config.submission[0],
            self.submission_port,
            self.config.imap[0],
            self.imap_port,
        )

    async def _start(self, verifier: PasswordVerifier) -> None:
        loop = asyncio.get_running_loop()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = store = await MailStore.open(self.data_dir / MAIL_STORE_FILE_NAME)
        self.queue = queue = await OutboxQueue.open(self.data_dir / OUTBOX_FILE_NAME)
        publish = self.node.events.publish
        self._inbound_handlers.append(self._inbound(store, YGGMAIL_DOMAIN))
        await self._open_yggmail(self._inbound_handlers[-1])
        self.runner = runner = QueueRunner(
            queue=queue,
            sink=store,
            own=self.own,
            connector=self.node,
            config=self.config,
            rng=random.Random(),
            publish=publish,
            events=self.node.events,
            yggmail=self._quic,
            yggmail_unavailable=self.yggmail_unavailable or "",
            relay=getattr(self.node, "relay", None),
        )
        inbound = self._inbound(store, MAIL_DOMAIN)
        self._inbound_handlers.append(inbound)
        relay = getattr(self.node, "relay", None)
        if relay is not None:  # mail fetched from our relays (core.relay)
            relay.register_inbound("mail", inbound.from_relay)
        hostname = f"[IPv6:{self.own.node_address}]"
        with _bind_errors(f"[{self.own.node_address}]:{self.config.mesh_port}", "mesh_port"):
            mesh_server = await self.node.create_server(
                self._smtp_factory(inbound, hostname, auth=False), self.config.mesh_port
            )
        self._servers.append(mesh_server)
        submission = SubmissionHandler(
            own=self.own,
            verifier=verifier,
            queue=queue,
            on_queued=runner.wake,
            max_recipients=self.config.max_recipients,
            max_queue=self.config.max_queue,
            yggmail_unavailable=self.yggmail_unavailable,
        )
        host, port = self.config.submission
        with _bind_errors(f"{host}:{port}", "smtp"):
            server = await loop.create_server(
                self._smtp_factory(submission, "localhost", auth=True), host, port
            )
        self._servers.append(server)
        self.submission_port = server.sockets[0].getsockname()[1]
        self._imap = ImapServer(store, verifier, username=str(self.own))
        with _bind_errors("{}:{}".format(*self.config.imap), "imap"):
            await self._imap.start(*self.config.imap)
        self.imap_port = self._imap.port
        self._runner_task = loop.create_task(runner.run(), name="mail-queue-runner")

    def _inbound(self, store: MailStore, domain: str) -> MeshInboundHandler:
        """The handler for mail from other nodes, on the mesh or over Yggmail's transport."""
        return MeshInboundHandler(
            own=self.own,
            sink=store,
            limiter=PeerRateLimiter(
                burst=self.config.rate_burst, per_minute=self.config.rate_per_minute
            ),
            publish=self.node.events.publish,
            max_recipients=self.config.max_recipients,
            domain=domain,
        )

    async def _open_yggmail(self, handler: MeshInboundHandler) -> None:
        """Yggmail's transport: QUIC streams by key, one SMTP session each (if possible)."""
        if not self.node.key_datagrams_supported:
            self.yggmail_unavailable = NO_KEY_DATAGRAMS
            log.info("mail: no Yggmail transport: %s", NO_KEY_DATAGRAMS)
            return
        smtp = self._smtp_factory(handler, self.own.key.hex(), auth=False, yggmail=True)
        try:
            # QUIC hands out credit as data arrives (no backpressure into aioquic): a
            # stream whose SMTP reader lags holds what came, up to one whole message.
            held = KeyQuicConfig(max_held=self.config.max_size + 1024 * 1024)
            self._quic = await self.node.open_key_quic(lambda key: smtp(), held)
        except MeshError as exc:
            self.yggmail_unavailable = str(exc)
            log.warning("mail: no Yggmail transport: %s", exc)

    def _smtp_factory(
        self, handler: Any, hostname: str, *, auth: bool, yggmail: bool = False
    ) -> Callable[[], SMTP]:
        loop = asyncio.get_running_loop()
        # Every local client comes from 127.0.0.1: per-peer caps are for the mesh side.
        per_peer = self.config.max_connections if auth else self.config.connections_per_peer
        limiter = ConnectionLimiter(per_peer=per_peer, total=self.config.max_connections)

        kind = YggmailSMTP if yggmail else MeshSMTP

        def factory() -> SMTP:
            smtp = kind(
                handler,
                limiter=limiter,
                hostname=hostname,
                ident=SMTP_IDENT,
                data_size_limit=self.config.max_size,
                # Submission listens on loopback only: no TLS needed for AUTH.
                auth_require_tls=not auth,
                auth_exclude_mechanism=() if auth else ("PLAIN", "LOGIN"),
                timeout=self.config.io_timeout * 2.5,
                # Bound one connection's work: generous for sessions of 20 messages.
                command_call_limit=COMMANDS_PER_CONNECTION,
                loop=loop,
            )
            self._connections.add(smtp)
            return smtp

        return factory

    async def close(self) -> None:
        if self._runner_task is not None:
            self._runner_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner_task
            self._runner_task = None
        if self._quic is not None:
            self._quic.close()
            self._quic = None
        if self._imap is not None:
            await self._imap.close()
            self._imap = None
        for server in self._servers:
            server.close()
        tasks = []
        for smtp in list(self._connections):
            if smtp.transport is not None:
                smtp.transport.close()
            task = getattr(smtp, "_handler_coroutine", None)
            if task is not None and not task.done():
                tasks.append(task)
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT)
        for server in self._servers:
            try:
                await within(server.wait_closed(), CLOSE_TIMEOUT)
            except TimeoutError:
                log.warning("mail: a server did not close within %.0f s", CLOSE_TIMEOUT)
        self._servers.clear()
        if self.queue is not None:
            await self.queue.close()
            self.queue = None
        if self.store is not None:
            await self.store.close()
            self.store = None

    def endpoints(self) -> dict[str, Any]:
        """For ``mesh status``: where the mail service listens."""

        def hostport(host: object, port: int | None) -> str:  # IPv6 literals in brackets
            return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"

        return {
            "mail_address": str(self.own),
            "yggmail_address": str(self.own.on(YGGMAIL_DOMAIN)),
            "yggmail": "on" if self._quic is not None else self.yggmail_unavailable,
            "mesh_smtp": hostport(self.own.node_address, self.config.mesh_port),
            "submission": hostport(self.config.submission[0], self.submission_port),
            "imap": hostport(self.config.imap[0], self.imap_port),
            "deliveries_in_flight": self.runner.in_flight if self.runner else 0,
            # mail from other nodes refused, by transport (mesh, yggmail) and reason;
            # what aiosmtpd refuses itself (oversize, syntax) is not counted here
            "refused": {h.domain: dict(h.refused) for h in self._inbound_handlers},
        }

    # -- control API ------------------------------------------------------------------------
    def control_methods(self) -> dict[str, Callable[[dict[str, Any]], Awaitable[Any]]]:
        return {"mail.queue": self._control_queue}

    async def _control_queue(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        if self.queue is None:
            raise MeshError("the mail service is not running")
        from .cli import delivery_json

        rows = [delivery_json(d) for d in await self.queue.pending()]
        if self.runner is not None:  # Sent copies that failed to be filed, retried with backoff
            rows += self.runner.copy_rows()
        return rows


@contextlib.contextmanager
def _bind_errors(where: str, key: str) -> Iterator[None]:
    """A listener that cannot bind says which one and what to change."""
    try:
        yield
    except OSError as exc:
        raise MeshError(
            f"mail: cannot listen on {where} ({exc.strerror or exc}); another program may "
            f"use it: stop it or set another address with `{key} = ...` under [mail] in "
            "mesh.toml"
        ) from exc


def create_service(node: Any, config: Mapping[str, Any], data_dir: Path) -> MailService:
    """The ``meshsuite.services`` entry point."""
    return MailService(node, MailConfig.from_mapping(config), data_dir)
