"""The chat service in the node process: the mesh server, delivery through the core
outbox, receipts, typing, presence, message requests, and the ``chat.*`` control methods.

Incoming streams (port 5310) are read by :class:`ChatConnection`; each envelope passes
:func:`apps.chat.checks.check` and, accepted, is committed through the store's group
commit before its ACK is written (so an ACK means "durable at the peer"). Acks go back
in order while later envelopes are already being checked (pipelined).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from apps.chat.checks import Context, Refusal, Verdict, check
from apps.chat.config import ChatConfig
from apps.chat.connection import (
    NO_ID,
    ChatConnection,
    EnvelopeReceived,
    MalformedEnvelope,
    ProtocolFault,
    RemoteError,
)
from apps.chat.control import ChatControl, trust_of
from apps.chat.envelope import MAX_IDS, Envelope, EnvelopeError, Kind, ids_body
from apps.chat.links import LinkError, Links
from apps.chat.store import DB_FILE, ChatStore, Incoming
from core import (
    BaseService,
    ConnectionLimiter,
    Delivered,
    DeliveryResult,
    Failed,
    MeshError,
    NodeEvent,
    Outbox,
    OutboxEntry,
    PeerRateLimiter,
    RelayVerdict,
    Retry,
    RetryPolicy,
    UsageError,
    address_for_key,
    peer_address,
    within,
)

__all__ = ["ChatService", "create_service"]

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
APP_KEY_FILE = "app-key"
ONLINE_FOR = 300.0  # s a peer counts as online after a successful exchange
MAX_TRACKED_PEERS = 4096
RECEIPT_DELAY = 0.005  # s receipts wait to be batched into one envelope


class Contacts(Protocol):
    """What chat needs of the node's contacts (``node.contacts``, core kit)."""

    async def get(self, key: bytes) -> Any | None: ...

    async def seen(self, key: bytes) -> Any: ...

    async def resolve(self, name: str) -> Any: ...

    async def add(self, key: bytes) -> Any: ...

    async def list(self) -> list[Any]: ...


class ChatService(BaseService):
    def __init__(
        self,
        node: Any,
        config: ChatConfig,
        data_dir: Path,
        *,
        contacts: Contacts | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self.config = config
        self.dir = data_dir / "chat"
        self.contacts: Contacts | None = contacts or getattr(node, "contacts", None)
        self.clock = clock
        self.store: ChatStore | None = None
        self.outbox: Outbox | None = None
        self.links = Links(
            node,
            config.port,
            connect_timeout=config.connect_timeout,
            ack_timeout=config.ack_timeout,
        )
        self.port = config.port
        self.refused: Counter[str] = Counter()
        self._server: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._handlers: set[asyncio.Task[Any]] = set()  # incoming streams being served
        self._closing = False
        self._rate = PeerRateLimiter(
            burst=config.rate_burst, per_minute=config.rate_per_minute, max_peers=4096
        )
        # Security records: at most 5 at once and 5 a minute per source *address* (a
        # stranger claiming a fresh key in each frame is still one address), and 30 a
        # minute for the whole node; the store bounds what is kept (store.py).
        self._strangers = PeerRateLimiter(
            burst=config.stranger_rate_burst,
            per_minute=config.stranger_rate_per_minute,
            max_peers=4096,
        )
        self.stranger_bytes = 0  # strangers' waiting text on disk (start: from the store)
        self._records = PeerRateLimiter(burst=5, per_minute=5, max_peers=4096)
        self._all_records = PeerRateLimiter(burst=30, per_minute=30, max_peers=1)
        self._conns = ConnectionLimiter(per_peer=config.conns_per_peer, total=config.conns_total)
        self._online: dict[bytes, float] = {}
        self._receipts: dict[bytes, list[bytes]] = {}
        self.signer_key, self._sign, self.signing = self._signing_key()

    # -- signing key ------------------------------------------------------------------
    def _signing_key(self) -> tuple[bytes, Callable[[bytes], bytes], str]:
        identity = getattr(self.node, "identity", None)
        if identity is not None:
            return bytes(identity.public_key), identity.sign, "node key"
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.dir / APP_KEY_FILE
        if path.exists():
            seed = path.read_bytes()
            if len(seed) != 32:
                raise MeshError(f"{path} is not a 32-byte chat app key: remove it to make one")
        else:
            seed = os.urandom(32)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(seed)
        private = Ed25519PrivateKey.from_private_bytes(seed)
        public = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return public, private.sign, "app key"

    # -- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.store = await ChatStore.open(self.dir / DB_FILE)
        try:
            policy = RetryPolicy(
                initial=self.config.retry_initial,
                factor=2.0,
                max_delay=self.config.retry_max,
                jitter=0.1,
                expiry=self.config.expiry,
            )
            self.outbox = await Outbox.open(
                self.store.db,
                name="chat",
                policy=policy,
                max_entries=self.config.max_queued,
                max_batch=200,
            )
            await self._requeue()
            self.stranger_bytes = await self.store.stranger_bytes()
            self._server = await self.node.start_server(self._incoming, self.config.port)
            self.port = int(getattr(self._server, "port", self.config.port))
            relay = getattr(self.node, "relay", None)
            if relay is None:
                self.outbox.start(self.node, deliver=self._deliver, expired=self._expired)
            else:
                self.outbox.start(
                    self.node,
                    deliver=self._deliver,
                    expired=self._expired,
                    handoff=relay.handoff("chat", self._relayed),
                    handoff_after=relay.config.handoff_after,
                )
                relay.register_inbound("chat", self._from_relay)
            self._own(self._watch())
            self._own(self._prune())
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._closing = True
        relay = getattr(self.node, "relay", None)
        if relay is not None:
            relay.unregister_inbound("chat")
        # Incoming streams first (they read the store), then our own tasks.
        pending = [*self._handlers, *self._tasks]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self.outbox is not None:
            await self.outbox.close()
            self.outbox = None
        await self.links.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await within(self._server.wait_closed(), 5)
            self._server = None
        if self.store is not None:
            await self.store.close()
            self.store = None

    def _own(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def endpoints(self) -> dict[str, Any]:
        return {"chat": f"[{self.node.address}]:{self.port}", "signing": self.signing}

    def _publish(self, kind: str, data: dict[str, Any]) -> None:
        self.node.events.publish(NodeEvent(kind, data))

    def _publish_all(self, kind: str, items: Iterable[dict[str, Any]]) -> None:
        for data in items:
            self._publish(kind, data)

    @property
    def db(self) -> ChatStore:
        if self.store is None:
            raise MeshError("the chat service is not running")
        return self.store

    async def _requeue(self) -> None:
        """Pending messages with no outbox entry are queued again. A message and its
        entry are committed together (``Outbox.put_with``); stores written by releases
        that committed them one after the other can hold such messages after a crash."""
        assert self.outbox is not None
        queued = {e.ref for e in await self.outbox.pending()}
        for msg in await self.db.outgoing("pending"):
            if msg["id"] not in queued:
                env = self._envelope_for(msg, sent_ms=round(msg["ts"] * 1000))
                await self.outbox.put(env.recipient, bytes(env), ref=msg["id"])

    def _envelope_for(self, msg: dict[str, Any], *, sent_ms: int) -> Envelope:
        return Envelope.build(
            Kind.TEXT,
            sender=self.node.key,
            signer=self.signer_key,
            recipient=bytes.fromhex(msg["to"]),
            sent_ms=sent_ms,
            body=msg["body"].encode(),
            sign=self._sign,
            reply_to=bytes.fromhex(msg["reply_to"]) if msg["reply_to"] else None,
            id=bytes.fromhex(msg["id"]),
        )

    # -- presence ---------------------------------------------------------------------
    def _set_online(self, key: bytes, online: bool) -> None:
        was = self.is_online(key)
        if online:
            self._online[key] = time.monotonic()
            while len(self._online) > MAX_TRACKED_PEERS:
                self._online.pop(next(iter(self._online)))
        else:
            self._online.pop(key, None)
        if was != online:
            self._publish("chat.presence", {"key": key.hex(), "online": online})

    def is_online(self, key: bytes) -> bool:
        seen = self._online.get(key)
        return seen is not None and time.monotonic() - seen < ONLINE_FOR

    async def _watch(self) -> None:
        async with self.node.events.subscribe(("peer.", "session.")) as sub:
            async for event in sub:
                raw = event.data.get("key")
                if isinstance(raw, str) and len(raw) == 64:
                    with contextlib.suppress(ValueError):
                        key = bytes.fromhex(raw)
                        self._set_online(key, not event.kind.endswith(".down"))

    async def _prune(self) -> None:
        while True:
            with contextlib.suppress(MeshError):
                await self.db.prune_seen(self.clock())
                self.stranger_bytes = await self.db.stranger_bytes()
            await asyncio.sleep(3600)

    # -- incoming streams -------------------------------------------------------------
    async def _incoming(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        source = peer_address(writer.transport)
        task = asyncio.current_task()
        if self._closing or task is None or source is None or not self._conns.acquire(source):
            writer.close()
            return
        self._handlers.add(task)
        try:
            await self._serve(source, reader, writer)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            log.debug("chat stream from %s ended: %s", source, exc)
        except MeshError as exc:
            log.info("chat stream from %s stopped: %s", source, exc)
        except asyncio.CancelledError:
            # close() cancels the streams it serves; ending normally keeps asyncio's
            # stream callback from logging the cancellation as an error.
            if not self._closing:
                raise
        finally:
            self._handlers.discard(task)
            self._conns.release(source)
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve(
        self, source: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = ChatConnection()
        answers: asyncio.Queue[asyncio.Future[bytes] | None] = asyncio.Queue(maxsize=512)
        acker = asyncio.ensure_future(self._write_acks(answers, writer))
        # A new stream must bring its first whole frame within first_frame_timeout (one
        # deadline, however the bytes trickle in), so silent streams cannot hold the
        # per-peer slots for idle_timeout; after that, idle_timeout per read.
        loop = asyncio.get_running_loop()
        first_by: float | None = loop.time() + self.config.first_frame_timeout
        try:
            while not acker.done():
                wait = self.config.idle_timeout
                if first_by is not None:
                    wait = first_by - loop.time()
                try:
                    data = await within(reader.read(65536), max(wait, 0))
                except TimeoutError:
                    if first_by is not None:
                        self.refused["first-frame-timeout"] += 1
                        log.info("chat: closed a stream from %s: no frame in time", source)
                    raise
                if not data:
                    break
                events = conn.receive_data(data)
                if events:
                    first_by = None
                for event in events:
                    if isinstance(event, RemoteError):
                        # The sender gave up on this stream (nothing to answer): end it
                        # now instead of holding its slot until idle_timeout.
                        log.info("chat: %s ended its stream with an error frame", source)
                        return
                    if isinstance(event, ProtocolFault):
                        self._count(event.refusal, f"from {source}: {event.reason}")
                        await answers.put(_done(event.reply))
                        return
                    if isinstance(event, MalformedEnvelope):
                        self._count(Refusal.MALFORMED, f"from {source}: {event.reason}")
                        ack = conn.send_ack(NO_ID, Refusal.MALFORMED, event.reason)
                        await answers.put(_done(ack))
                    elif isinstance(event, EnvelopeReceived):
                        await answers.put(await self._receive(source, event.envelope, conn))
        finally:
            with contextlib.suppress(asyncio.QueueFull):
                answers.put_nowait(None)
            with contextlib.suppress(Exception):
                await within(acker, 10)
            acker.cancel()

    @staticmethod
    async def _write_acks(
        answers: asyncio.Queue[asyncio.Future[bytes] | None], writer: asyncio.StreamWriter
    ) -> None:
        while (answer := await answers.get()) is not None:
            data = await answer
            writer.write(data)
            if answers.empty():
                await writer.drain()
        await writer.drain()

    def _count(self, refusal: Refusal, detail: str) -> None:
        self.refused[refusal.label] += 1
        log.info("chat: refused (%s) %s", refusal.label, detail)

    async def _receive(
        self, source: Any, env: Envelope, conn: ChatConnection
    ) -> asyncio.Future[bytes]:
        """Check one envelope now (in stream order); commit it in the background. The
        future answers its ACK frame once that is decided (after the commit)."""
        if not self._rate.allow(source):
            self._count(Refusal.RATE_LIMITED, f"from {source}")
            return _done(conn.send_ack(env.id, Refusal.RATE_LIMITED, "slow down"))
        judged = await self._judge(source, env)
        if isinstance(judged, Incoming):
            return self._own(self._commit(judged, conn))
        return _done(conn.send_ack(env.id, *judged))

    async def _judge(self, source: Any, env: Envelope) -> Incoming | tuple[Refusal, str]:
        """Every check of a received envelope (direct, or fetched from a relay with
        ``source`` the address of the key that signed inside the seal): what to commit,
        or the refusal to answer (OK for what is dropped silently: blocked, typing)."""
        store = self.db
        pinned = await store.pinned(env.sender) if env.signer != env.sender else None
        now = self.clock()
        verdict = check(
            env,
            Context(
                source=source,
                own_key=self.node.key,
                pinned=pinned,
                seen=False,  # the commit is the authority on ids (below)
                now=now,
                expiry=self.config.expiry,
                skew=self.config.skew,
            ),
        )
        if verdict.refusal in (Refusal.STALE, Refusal.NO_TIMESTAMP) and await store.seen(env.id):
            # Check 5 comes before check 6: a replay is called a replay whatever its time.
            # (An envelope that passes every check is refused as a replay by the commit,
            # where the seen table is written in the same transaction: one query fewer.)
            verdict = Verdict(Refusal.REPLAY, f"message {env.id.hex()} was received before")
        if not verdict.ok:
            self._count(verdict.refusal, f"from {source}: {verdict.detail}")
            if verdict.refusal in (Refusal.KEY_CHANGED, Refusal.FORGED_SENDER):
                await self._security(source, env.sender, verdict.refusal.label, verdict.detail)
            return verdict.refusal, verdict.detail
        self._set_online(env.sender, True)
        contact = await self.contacts.get(env.sender) if self.contacts is not None else None
        trust = trust_of(contact)
        if trust == "blocked":  # dropped; the sender is told nothing
            return Refusal.OK, ""
        # A stranger: not a trusted contact, and a conversation we neither accepted nor
        # started (writing to someone accepts their answers and receipts).
        stranger = trust != "trusted"
        if stranger:
            conversation = await store.conversation(env.sender)
            stranger = conversation is None or not conversation["accepted"]
        if stranger:
            refused = self._stranger_refusal(source, env)
            if refused is not None:
                self._count(refused[0], f"from {source}: {refused[1]}")
                return refused
        if env.kind is Kind.TYPING:
            self._publish("chat.typing", {"conversation": env.sender.hex(), "active": env.active})
            return Refusal.OK, ""
        config = self.config
        return Incoming(
            env,
            received=now,
            keep_until=now + self.config.expiry + 2 * self.config.skew,
            pin=verdict.pin,
            request=stranger,
            quota=(config.stranger_messages, config.stranger_bytes) if stranger else None,
        )

    def _stranger_refusal(self, source: Any, env: Envelope) -> tuple[Refusal, str] | None:
        """Why a stranger's envelope is refused for now (temporary codes: the sender
        retries later, and gets through once accepted), or None."""
        if not self._strangers.allow(source):
            return Refusal.RATE_LIMITED, "slow down: a message request is a few messages"
        budget = self.config.strangers_total_bytes
        if env.kind is Kind.TEXT and self.stranger_bytes + len(env.body) > budget:
            return Refusal.BUSY, "the receiver holds no more message requests for now"
        return None

    async def _commit(self, item: Incoming, conn: ChatConnection) -> bytes:
        return conn.send_ack(item.envelope.id, *await self._store(item))

    async def _store(self, item: Incoming) -> tuple[Refusal, str]:
        """Commit an accepted envelope; publish and queue its receipt after the commit."""
        env = item.envelope
        try:
            stored = await self.db.commit_incoming(item)
        except Exception as exc:
            log.warning("chat: could not store %s: %s", env.id.hex(), exc)
            return Refusal.BUSY, "the receiver could not store it"
        if stored.over_quota:
            self._count(Refusal.BUSY, f"request of {env.sender.hex()[:16]} is full")
            return Refusal.BUSY, "your message request is full until you are accepted"
        if item.quota is not None and stored.message is not None and not stored.accepted:
            self.stranger_bytes += len(env.body)
        if stored.duplicate:
            self._count(Refusal.REPLAY, f"message {env.id.hex()} (already stored)")
            return Refusal.REPLAY, "already received"
        self._publish_all("chat.state", stored.states)
        if stored.message is not None:
            self._publish("chat.message", stored.message)
            if stored.request:
                if self.contacts is not None:
                    with contextlib.suppress(Exception):
                        await self.contacts.seen(env.sender)
                self._publish("chat.request", {"key": env.sender.hex()})
            if not item.request or stored.accepted:  # no receipt to a stranger
                self._queue_receipt(env.sender, env.id)
        return Refusal.OK, ""

    # -- relays (core.relay: the node's relay service) -----------------------------------
    async def _from_relay(self, sender: bytes, body: bytes) -> RelayVerdict:
        """An envelope fetched from a relay, sealed and signed by ``sender``: checked as
        strictly as a direct one (the source is the signer's address), stored once."""
        try:
            env = Envelope.parse(body)
        except EnvelopeError as exc:
            self._count(Refusal.MALFORMED, f"through a relay from {sender.hex()}: {exc}")
            return RelayVerdict.REFUSED
        judged = await self._judge(address_for_key(sender), env)
        code, detail = judged if not isinstance(judged, Incoming) else await self._store(judged)
        if code in (Refusal.OK, Refusal.REPLAY):
            return RelayVerdict.ACCEPTED
        if code.temporary:
            return RelayVerdict.RETRY
        log.info("chat: refused a relayed envelope from %s: %s", sender.hex()[:16], detail)
        return RelayVerdict.REFUSED

    def _relayed(self, entry: OutboxEntry) -> Callable[[sqlite3.Connection], Any] | None:
        """A relay took ``entry``: a text is ``relayed`` until its receipt comes back."""
        if entry.payload[1] != Kind.TEXT:
            return None
        move = ChatStore.state_row([bytes.fromhex(entry.ref)], "relayed", only_from=("pending",))

        def write(conn: sqlite3.Connection) -> Callable[[], None] | None:
            changes = move(conn)
            return (lambda: self._publish_all("chat.state", changes)) if changes else None

        return write

    async def _security(self, source: Any, key: bytes, kind: str, detail: str) -> None:
        if not self._records.allow(str(source)) or not self._all_records.allow("all"):
            self.refused["security-records-dropped"] += 1
            return
        record = await self.db.add_security(key, kind, detail, str(source))
        self._publish("chat.security", record)

    # -- receipts ---------------------------------------------------------------------
    def _queue_receipt(self, peer: bytes, id_: bytes) -> None:
        waiting = self._receipts.setdefault(peer, [])
        waiting.append(id_)
        if len(waiting) == 1:
            self._own(self._flush_receipts(peer))

    async def _flush_receipts(self, peer: bytes) -> None:
        await asyncio.sleep(RECEIPT_DELAY)
        ids = self._receipts.pop(peer, [])
        await self._put_ids(Kind.RECEIPT, peer, ids)

    async def _put_ids(self, kind: Kind, peer: bytes, ids: list[bytes]) -> None:
        assert self.outbox is not None
        for at in range(0, len(ids), MAX_IDS):
            env = self._build(kind, peer, ids_body(ids[at : at + MAX_IDS]))
            await self.outbox.put(peer, bytes(env), ref=env.id.hex())

    def _build(
        self, kind: Kind, peer: bytes, body: bytes, reply_to: bytes | None = None
    ) -> Envelope:
        return Envelope.build(
            kind,
            sender=self.node.key,
            signer=self.signer_key,
            recipient=peer,
            sent_ms=int(self.clock() * 1000),
            body=body,
            sign=self._sign,
            reply_to=reply_to,
        )

    # -- delivery (the core outbox calls these) ---------------------------------------
    async def _deliver(self, dest: bytes, entries: list[OutboxEntry]) -> list[DeliveryResult]:
        frames = [(e.payload, bytes.fromhex(e.ref)) for e in entries]
        try:
            acks = await self.links.exchange(dest, frames)
        except LinkError as exc:
            self._set_online(dest, False)
            return [Retry(str(exc)) for _ in entries]
        self._set_online(dest, True)
        results: list[DeliveryResult] = []
        for entry, ack in zip(entries, acks, strict=True):
            texts = entry.payload[1] == Kind.TEXT
            code = Refusal(ack.code) if ack.code in Refusal._value2member_map_ else None
            if code in (Refusal.OK, Refusal.REPLAY):
                # "sent" commits with the removal of the entry (one transaction).
                results.append(Delivered(self._mark_sent(entry.ref) if texts else None))
            elif code is not None and code.temporary:
                results.append(Retry(f"{code.label}: {ack.reason}"))
            else:
                label = code.label if code is not None else f"code {ack.code}"
                reason = f"refused by the peer ({label}): {ack.reason}"
                results.append(Failed(reason))
                if texts:
                    await self._fail(bytes.fromhex(entry.ref), reason)
        return results

    def _mark_sent(self, ref: str) -> Callable[[sqlite3.Connection], Callable[[], None] | None]:
        move = ChatStore.state_row([bytes.fromhex(ref)], "sent", only_from=("pending",))

        def write(conn: sqlite3.Connection) -> Callable[[], None] | None:
            changes = move(conn)
            if not changes:
                return None
            return lambda: self._publish_all("chat.state", changes)

        return write

    async def _fail(self, id_: bytes, reason: str) -> None:
        changes = await self.db.set_state([id_], "failed", reason, only_from=("pending", "sent"))
        self._publish_all("chat.state", changes)

    async def _expired(self, entry: OutboxEntry) -> None:
        if entry.payload[1] != Kind.TEXT:
            return
        days = self.config.expiry_days
        reason = f"not delivered within {days:g} days"
        if entry.last_error:
            reason += f" (last: {entry.last_error})"
        await self._fail(bytes.fromhex(entry.ref), reason)

    # -- what the control methods do -------------------------------------------------
    async def send(self, key: bytes, body: str, reply_to: bytes | None) -> dict[str, Any]:
        assert self.outbox is not None
        env = self._build(Kind.TEXT, key, body.encode(), reply_to)
        write = self.db.outgoing_row(env, now=self.clock())
        _, message = await self.outbox.put_with(key, bytes(env), ref=env.id.hex(), also=write)
        assert message is not None  # a new id: never already queued
        self._publish("chat.message", message)
        return message

    async def retry(self, id_: bytes) -> dict[str, Any]:
        assert self.outbox is not None
        msg = await self.db.message(id_)
        if msg is None or msg["direction"] != "out":
            raise UsageError(f"no message {id_.hex()} sent from this node")
        if msg["state"] == "failed":
            env = self._envelope_for(msg, sent_ms=int(self.clock() * 1000))
            changes = await self.db.set_state([id_], "pending", only_from=("failed",))
            self._publish_all("chat.state", changes)
            await self.outbox.put(env.recipient, bytes(env), ref=msg["id"])
        await self.outbox.wake(bytes.fromhex(msg["to"]))
        return await self.db.message(id_) or msg

    async def mark_read(self, key: bytes) -> int:
        """Mark a conversation read; a read receipt goes only to a contact (trusted) or
        an accepted conversation, never to a stranger whose request is being read."""
        ids = await self.db.mark_read(key)
        conv = await self.db.conversation(key)
        trusted = self.contacts is not None and trust_of(await self.contacts.get(key)) == "trusted"
        accepted = conv is not None and conv["accepted"]
        wanted = conv is None or conv["read_receipts"]
        if ids and wanted and (trusted or accepted):
            await self._put_ids(Kind.READ, key, ids)
        return len(ids)

    def send_typing(self, key: bytes, active: bool) -> None:
        env = self._build(Kind.TYPING, key, b"\x01" if active else b"\x00")

        async def send() -> None:
            with contextlib.suppress(OSError, TimeoutError, LinkError):
                await self.links.send_only(key, bytes(env), env.id)

        self._own(send())

    # -- control methods --------------------------------------------------------------
    def control_methods(self) -> dict[str, Handler]:
        return ChatControl(self).methods()


def _done(data: bytes) -> asyncio.Future[bytes]:
    future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    future.set_result(data)
    return future


def create_service(node: Any, config: Mapping[str, Any], data_dir: Path) -> ChatService:
    return ChatService(node, ChatConfig.from_mapping(config), data_dir)
