"""The relay service in every node: serving as a relay, using relays, and the app hooks.

* **Serving** (any node whose owner ran ``mesh relay allow``): a mesh server on
  :data:`RELAY_PORT` takes ENROLL/LEAVE (signed records), SUBMIT (sealed items for an
  enrolled person, committed before the OK, within quotas), FETCH and DELETE (by the
  recipient only: the mesh authenticates who asks). After a new item it NOTIFYs the
  recipient's node (best effort).
* **Using**: ``use`` enrolls with a relay, ``drop`` leaves it; either way the node
  announces the relays it uses to its contacts (a signed record, through the core outbox
  ``relay_records``: direct, or through the contact's own relays when it is offline).
  It fetches from its relays at start, on NOTIFY and every ``fetch_interval``; each item
  is unsealed, its sender checked, handed to the app registered for it
  (:meth:`RelayService.register_inbound`), and deleted on the relay only after the app
  committed (or refused) it.
* **Hand-off** (:meth:`RelayService.handoff`): what an app's outbox gives it after
  ``handoff_after`` seconds of failed direct delivery is sealed to the recipient and
  submitted to one of the relays the recipient announced.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.address import address_for_key
from core.contacts import Trust, UnknownContact, parse_key
from core.db import AppDatabase
from core.errors import MeshError, UsageError
from core.limits import ConnectionLimiter, PeerRateLimiter, TooManyConnections, peer_key
from core.outbox import Delivered, DeliveryResult, Outbox, OutboxEntry, Retry, RetryPolicy
from core.relay.config import RelayConfig
from core.relay.link import ByteBudget, FrameStream
from core.relay.sealing import (
    Record,
    RecordKind,
    SealError,
    Unsealed,
    item_id,
    seal,
    sign_record,
    unseal,
    verify_record,
)
from core.relay.store import DB_FILE, RelayStore, UseState
from core.relay.wire import (
    RELAY_PORT,
    Answer,
    Code,
    Delete,
    Done,
    Fetch,
    FrameType,
    Item,
    Notify,
    RecordRequest,
    Submit,
    WireError,
)
from core.types import NodeEvent

if TYPE_CHECKING:
    from core.node import Node

__all__ = ["RelayError", "RelayInboundFn", "RelayService", "RelayVerdict", "WriteFn"]

log = logging.getLogger(__name__)

RECORD_APP = "relay"  # sealed items carrying a contact's announcement
RECORD_SKEW = 600.0  # s an enroll/leave record's time may differ from ours
FETCH_ITEMS = 64
FETCH_BYTES = 32 * 1024 * 1024
NOTIFY_TIMEOUT = 10.0
HANDOFF_TIMEOUT = 120.0
INFLIGHT_BYTES = 128 * 1024 * 1024  # unfinished incoming frames, all streams together


class RelayError(MeshError):
    """A relay refused or could not be reached (the CLI's exit code 1)."""


class RelayVerdict(enum.Enum):
    """What an app did with a fetched item."""

    ACCEPTED = "accepted"  # committed, or already had it: delete on the relay
    REFUSED = "refused"  # never acceptable (bad signature, blocked ...): delete too
    RETRY = "retry"  # not now (busy, not running): keep it on the relay


RelayInboundFn = Callable[[bytes, bytes], Awaitable[RelayVerdict]]  # (sender key, body) -> verdict
WriteFn = Callable[[Any], Callable[[], None] | None]  # a Delivered write (sqlite conn)


@dataclass(frozen=True, slots=True)
class _Submitted:
    code: Code
    reason: str


class RelayService:
    """Created and started by the node process (``node.relay``), before the apps."""

    def __init__(
        self,
        node: Node,
        config: RelayConfig,
        data_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self.config = config
        self.path = data_dir / DB_FILE
        self.port = config.port or RELAY_PORT
        self.clock = clock
        self.store: RelayStore | None = None
        self.records: Outbox | None = None
        self._server: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._inbound: dict[str, RelayInboundFn] = {}
        self._conns = ConnectionLimiter(per_peer=4, total=256)
        self._inflight = ByteBudget(INFLIGHT_BYTES)  # unfinished frames, all streams
        self._rate = PeerRateLimiter(burst=2000, per_minute=60_000, max_peers=4096)
        self._fetch_locks: dict[bytes, asyncio.Lock] = {}
        self._fetch_again: set[bytes] = set()
        self._notifying: set[bytes] = set()
        self._wake = asyncio.Event()
        self._closing = False

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        self.store = await RelayStore.open(self.path, self.config)
        try:
            self.records = await Outbox.open(
                self.store.db,
                name="relay_records",
                policy=RetryPolicy(initial=30.0, max_delay=3600.0, expiry=self.config.expiry),
                max_entries=10_000,
                max_batch=8,
            )
            self._server = await self.node.start_server(self._incoming, self.port)
            self.port = int(getattr(self._server, "port", self.port))
            self.register_inbound(RECORD_APP, self._inbound_record)
            self._own(self._background())
            self._own(self._watch_contacts())
            self.records.start(
                self.node,
                deliver=self._deliver_record,
                expired=_nothing,
                handoff=self.handoff(RECORD_APP),
                handoff_after=self.config.handoff_after,
            )
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop serving, end every task this service started, close the store (in that
        order: the tasks use the store); again does nothing."""
        self._closing = True
        server, self._server = self._server, None
        records, self.records = self.records, None
        store, self.store = self.store, None
        if server is not None:
            server.close()
        ending = list(self._handlers | self._tasks)
        for task in ending:
            task.cancel()
        await asyncio.gather(*ending, return_exceptions=True)
        if records is not None:
            await records.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                if server is not None:
                    await server.wait_closed()
        if store is not None:
            await store.close()

    def _own(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` as a task of this service (ended by :meth:`close`)."""
        started = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(started)
        started.add_done_callback(self._tasks.discard)

    @property
    def db(self) -> RelayStore:
        if self.store is None:
            raise MeshError("the relay service is not running")
        return self.store

    @property
    def database(self) -> AppDatabase:
        return self.db.db

    def _identity(self) -> Any:
        identity = self.node.identity
        if identity is None:
            raise MeshError(
                "this node's key is held by the yggdrasil daemon, not by meshsuite: it "
                "cannot sign or open relay items (see docs/relays.md)"
            )
        return identity

    def endpoints(self) -> dict[str, Any]:
        return {"relay": f"[{self.node.address}]:{self.port}"}

    # -- the app kit --------------------------------------------------------------------
    def register_inbound(self, app: str, handler: RelayInboundFn) -> None:
        """Fetched items for ``app`` go to ``handler(sender, body)``: the sender is the key
        that signed inside the seal. Registering starts a fetch (items may be waiting)."""
        self._inbound[app] = handler
        if app != RECORD_APP:
            self._wake.set()

    def unregister_inbound(self, app: str) -> None:
        self._inbound.pop(app, None)

    def handoff(
        self, app: str, on_relayed: Callable[[OutboxEntry], WriteFn | None] | None = None
    ) -> Callable[[bytes, list[OutboxEntry]], Awaitable[list[DeliveryResult] | None]]:
        """What an :class:`core.outbox.Outbox` calls after ``handoff_after`` seconds of
        failed delivery (``outbox.start(..., handoff=relay.handoff("chat"))``): returns
        None when the destination announced no relay (the outbox keeps retrying), else one
        result per entry: :class:`Delivered` (with ``on_relayed(entry)``'s write) for what a
        relay took, :class:`Retry` for the rest."""

        async def handoff(
            destination: bytes, entries: list[OutboxEntry]
        ) -> list[DeliveryResult] | None:
            taken = await self.submit(app, destination, [(e.ref, e.payload) for e in entries])
            if taken is None:
                return None
            results: list[DeliveryResult] = []
            for entry, refusal in zip(entries, taken, strict=True):
                if refusal is None:
                    results.append(Delivered(on_relayed(entry) if on_relayed else None))
                else:
                    results.append(Retry(f"relays: {refusal}"))
            return results

        return handoff

    async def has_relays(self, destination: bytes) -> bool:
        """Whether ``destination`` announced a relay (a hand-off can be tried)."""
        return bool((await self.db.contact_relays(destination)).get(destination))

    async def submit(
        self, app: str, destination: bytes, items: list[tuple[str, bytes]]
    ) -> list[str | None] | None:
        """Seal each ``(ref, body)`` to ``destination`` and submit it to one of the relays
        it announced, in order. None when it announced none; else per item None (a relay
        committed it) or why no relay took it. For apps with their own queue (mail)."""
        relays = (await self.db.contact_relays(destination)).get(destination, [])
        if not relays:
            return None
        async with asyncio.timeout(HANDOFF_TIMEOUT):
            codes = await self._submit_anywhere(app, destination, relays, items)
        relayed = sum(1 for r in codes if r.code is Code.OK)
        if relayed:
            log.info("relay: %d %s item(s) for %s to a relay", relayed, app, destination.hex()[:16])
        return [None if r.code is Code.OK else r.reason for r in codes]

    async def _submit_anywhere(
        self, app: str, recipient: bytes, relays: list[bytes], items: list[tuple[str, bytes]]
    ) -> list[_Submitted]:
        identity = self._identity()
        sealed = [
            (item_id(identity.public_key, recipient, app, ref),
             seal(identity, recipient, app, ref, body))
            for ref, body in items
        ]  # fmt: skip
        results: list[_Submitted] = [_Submitted(Code.BUSY, "no relay tried")] * len(items)
        for relay in relays:
            todo = [i for i, r in enumerate(results) if r.code is not Code.OK]
            if not todo:
                break
            try:
                async with self._connect(relay) as stream:
                    for i in todo:
                        iid, blob = sealed[i]
                        await stream.send(Submit(recipient, iid, blob))
                        answer = await stream.receive()
                        if not isinstance(answer, Answer):
                            raise WireError(f"a relay answered a SUBMIT with {answer!r}")
                        results[i] = _Submitted(
                            answer.code, f"{relay.hex()[:16]}: {answer.code.label} {answer.reason}"
                        )
                        if answer.code in (Code.SUBMITTER_FULL, Code.RELAY_FULL, Code.NOT_ENROLLED):
                            break  # the rest would be refused the same way
            except (OSError, TimeoutError, WireError, MeshError) as exc:
                for i in todo:
                    if results[i].code is not Code.OK:
                        results[i] = _Submitted(Code.BUSY, f"{relay.hex()[:16]}: {exc}")
        return results

    # -- using relays ----------------------------------------------------------------------
    async def resolve(self, name: str) -> bytes:
        """A relay or person named by alias, key or key@mesh (a bare key need not be a
        contact). UsageError (exit 2) for a bad key or an unknown alias."""
        text = str(name).strip()
        if len(text) == 64 or "@" in text:
            key = parse_key(text)
        else:
            try:
                key = (await self.node.contacts.resolve(text)).key
            except UnknownContact:
                raise
        if key == self.node.key:
            raise UsageError("that is this node's own key")
        return key

    async def use(self, relay: bytes) -> UseState:
        """Enroll with ``relay``: returns once it answered. RelayError if it refused or
        could not be reached (it is then ``refused``, or ``pending`` and retried)."""
        identity = self._identity()
        now = self.clock()
        record = sign_record(identity, RecordKind.ENROLL, int(now * 1000), [relay])
        try:
            answer = await self._ask(relay, RecordRequest(FrameType.ENROLL, record))
        except (OSError, TimeoutError, WireError, MeshError) as exc:
            await self.db.set_using(relay, UseState.PENDING, f"unreachable: {exc}", now)
            raise RelayError(
                f"the relay {relay.hex()} cannot be reached ({exc}); it is pending and "
                "will be asked again"
            ) from None
        if not answer.ok:
            await self.db.set_using(relay, UseState.REFUSED, answer.reason, now)
            raise RelayError(
                f"the relay {relay.hex()} refused: {answer.code.label}: {answer.reason}"
            )
        await self.db.set_using(relay, UseState.ENROLLED, "", now)
        await self.announce()
        self._own(self.fetch(relay))
        return UseState.ENROLLED

    async def drop(self, relay: bytes) -> None:
        """Stop using ``relay``: contacts are told at once; the relay is told now or later.
        RelayError when the relay cannot be told now (it is retried)."""
        known = {u.relay for u in await self.db.using()}
        if relay not in known:
            raise UsageError(f"this node does not use the relay {relay.hex()}")
        await self.db.set_using(relay, UseState.LEAVING, "", self.clock())
        await self.announce()
        await self._leave(relay)

    async def _leave(self, relay: bytes) -> None:
        identity = self._identity()
        record = sign_record(identity, RecordKind.LEAVE, int(self.clock() * 1000), [relay])
        try:
            answer = await self._ask(relay, RecordRequest(FrameType.LEAVE, record))
        except (OSError, TimeoutError, WireError, MeshError) as exc:
            raise RelayError(
                f"dropped here, but the relay {relay.hex()} cannot be reached to be told "
                f"({exc}); it will be told later"
            ) from None
        if not answer.ok and answer.code is not Code.NOT_ALLOWED:
            raise RelayError(
                f"the relay {relay.hex()} answered {answer.code.label}: {answer.reason}"
            )
        await self.db.forget_using(relay)

    async def announce(self) -> None:
        """Tell every trusted contact which relays we use now (not strangers who only
        wrote to us: where we fetch is no business of theirs)."""
        assert self.records is not None
        identity = self._identity()
        relays = [u.relay for u in await self.db.using() if u.state is UseState.ENROLLED]
        stamp = await self.db.next_record_time(int(self.clock() * 1000))
        record = sign_record(identity, RecordKind.ANNOUNCE, stamp, relays[:8])
        for contact in await self.node.contacts.list():
            if contact.trust is Trust.TRUSTED:
                await self.records.put(contact.key, record, ref=f"{stamp}-{contact.key.hex()}")

    async def _announce_to(self, contact: bytes) -> None:
        """Our current record to one (new) contact."""
        assert self.records is not None
        identity = self._identity()
        relays = [u.relay for u in await self.db.using() if u.state is UseState.ENROLLED]
        if not relays:
            return
        stamp = await self.db.next_record_time(int(self.clock() * 1000))
        record = sign_record(identity, RecordKind.ANNOUNCE, stamp, relays[:8])
        await self.records.put(contact, record, ref=f"{stamp}-{contact.hex()}")

    async def _deliver_record(
        self, destination: bytes, entries: list[OutboxEntry]
    ) -> list[DeliveryResult]:
        results: list[DeliveryResult] = []
        try:
            async with self._connect(destination) as stream:
                for entry in entries:
                    await stream.send(RecordRequest(FrameType.ANNOUNCE, entry.payload))
                    answer = await stream.receive()
                    if not isinstance(answer, Answer):
                        raise WireError("no answer to an ANNOUNCE")
                    if answer.ok or not answer.code.temporary:
                        results.append(Delivered())
                    else:
                        results.append(Retry(f"{answer.code.label}: {answer.reason}"))
        except (OSError, TimeoutError, WireError, MeshError) as exc:
            results += [Retry(str(exc))] * (len(entries) - len(results))
        return results

    async def _inbound_record(self, sender: bytes, body: bytes) -> RelayVerdict:
        code, _ = await self._keep_record(sender, body)
        return RelayVerdict.RETRY if code.temporary else RelayVerdict.ACCEPTED

    async def _keep_record(self, source: bytes, data: bytes) -> tuple[Code, str]:
        try:
            record = verify_record(data)
        except SealError as exc:
            return Code.BAD_SIGNATURE, str(exc)
        if record.kind is not RecordKind.ANNOUNCE or record.owner != source:
            return Code.MALFORMED, "an announcement is its sender's own"
        contact = await self.node.contacts.get(source)
        if contact is None or contact.trust is Trust.BLOCKED:
            return Code.UNKNOWN_SENDER, "not a contact of this node"
        if await self.db.keep_announcement(source, record.time_ms, record.keys, data):
            self.node.events.publish(
                NodeEvent(
                    "relay.contact",
                    {"key": source.hex(), "relays": [k.hex() for k in record.keys]},
                )
            )
        return Code.OK, ""

    # -- fetching ------------------------------------------------------------------------
    async def fetch(self, relay: bytes) -> int:
        """Fetch what ``relay`` holds for us, hand it to the apps, delete what they took;
        how many items were taken. One fetch per relay at a time (a request meanwhile
        runs once more after it)."""
        lock = self._fetch_locks.setdefault(relay, asyncio.Lock())
        if lock.locked():
            self._fetch_again.add(relay)
            return 0
        taken = 0
        async with lock:
            while True:
                self._fetch_again.discard(relay)
                taken += await self._fetch_once(relay)
                if relay not in self._fetch_again:
                    break
        return taken

    async def _fetch_once(self, relay: bytes) -> int:
        identity = self._identity()
        taken = 0
        async with self._connect(relay) as stream:
            while True:
                await stream.send(Fetch(FETCH_ITEMS, FETCH_BYTES))
                items: list[Item] = []
                while True:
                    msg = await stream.receive()
                    if isinstance(msg, Item):
                        items.append(msg)
                    elif isinstance(msg, Done):
                        remaining = msg.remaining
                        break
                    elif isinstance(msg, Answer):
                        raise RelayError(
                            f"the relay refused a fetch: {msg.code.label}: {msg.reason}"
                        )
                    else:
                        raise WireError(f"unexpected {msg!r} in a fetch")
                done: list[bytes] = []
                for item in items:
                    if await self._take(identity, relay, item) is not RelayVerdict.RETRY:
                        done.append(item.item_id)
                if done:
                    await stream.send(Delete(tuple(done)))
                    answer = await stream.receive()
                    if not isinstance(answer, Answer) or not answer.ok:
                        raise WireError(f"the relay did not delete: {answer!r}")
                taken += len(done)
                await self.db.fetched(relay, self.clock())
                if len(done) < len(items) or remaining == 0:
                    return taken

    async def _take(self, identity: Any, relay: bytes, item: Item) -> RelayVerdict:
        try:
            opened: Unsealed = unseal(identity, item.blob)
        except SealError as exc:
            log.warning("relay: dropped an item from %s: %s", relay.hex()[:16], exc)
            return RelayVerdict.REFUSED
        handler = self._inbound.get(opened.app)
        if handler is None:
            log.info("relay: an item for %s, which is not running here: kept", opened.app)
            return RelayVerdict.RETRY
        try:
            return await handler(opened.sender, opened.body)
        except Exception:
            log.exception("relay: the %s app failed on a fetched item: kept", opened.app)
            return RelayVerdict.RETRY

    async def fetch_all(self) -> None:
        for u in await self.db.using():
            if u.state is UseState.ENROLLED:
                try:
                    await self.fetch(u.relay)
                except (OSError, TimeoutError, WireError, MeshError) as exc:
                    log.info("relay: fetch from %s failed: %s", u.relay.hex()[:16], exc)

    async def _background(self) -> None:
        """Fetch at start and every ``fetch_interval`` (or when woken); ask pending relays
        again; tell relays we left; drop what expired from what we hold."""
        while True:
            self._wake.clear()
            try:
                await self.db.expire(self.clock())
                for u in await self.db.using():
                    with contextlib.suppress(RelayError, UsageError):
                        if u.state is UseState.PENDING:
                            await self.use(u.relay)
                        elif u.state is UseState.LEAVING:
                            await self._leave(u.relay)
                await self.fetch_all()
            except MeshError as exc:
                log.info("relay: background pass stopped: %s", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.fetch_interval):
                    await self._wake.wait()

    async def _watch_contacts(self) -> None:
        async with self.node.events.subscribe(("contact.added", "contact.changed")) as sub:
            async for event in sub:
                if event.data.get("trust") != Trust.TRUSTED.value:
                    continue  # a stranger who wrote, or someone blocked: not told
                with contextlib.suppress(ValueError, MeshError):
                    await self._announce_to(bytes.fromhex(str(event.data.get("key"))))

    # -- serving -------------------------------------------------------------------------
    async def _incoming(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One stream from a peer (the key the mesh authenticated), within the limits."""
        stream = FrameStream(reader, writer, timeout=self.config.io_timeout, budget=self._inflight)
        source = peer_key(writer.transport)
        me = asyncio.current_task()
        try:
            if source is None or me is None or self._closing:
                return
            with self._conns.hold(source):
                self._handlers.add(me)
                try:
                    await self._requests(source, stream)
                finally:
                    self._handlers.discard(me)
        except TooManyConnections:
            log.debug("relay: too many streams from %s", source.hex()[:16] if source else "?")
        except (OSError, TimeoutError, WireError) as exc:
            log.debug("relay: a stream ended: %s", exc)
        except asyncio.CancelledError:
            if not self._closing:
                raise
        finally:
            await stream.close()

    async def _requests(self, source: bytes, stream: FrameStream) -> None:
        while (msg := await stream.receive()) is not None:
            if self._rate.allow(source):
                await self._serve(source, msg, stream)
            else:
                await stream.send(Answer(Code.RATE_LIMITED, "slow down"))

    async def _serve(self, source: bytes, msg: Any, stream: FrameStream) -> None:
        now = self.clock()
        if isinstance(msg, Submit):
            code, reason = await self.db.hold(msg.recipient, source, msg.item_id, msg.blob, now)
            await stream.send(Answer(code, reason))
            if code is Code.OK and reason != "already held":
                self._notify(msg.recipient)
        elif isinstance(msg, Fetch):
            items, held = await self.db.take(source, msg.max_items, msg.max_bytes, now)
            for item in items:
                await stream.send(item)
            await stream.send(Done(held - len(items)))
        elif isinstance(msg, Delete):
            await self.db.delete(source, msg.item_ids)
            await stream.send(Answer(Code.OK))
        elif isinstance(msg, RecordRequest):
            code, reason = await self._record_request(source, msg, now)
            await stream.send(Answer(code, reason))
        elif isinstance(msg, Notify):
            await stream.send(Answer(Code.OK))
            if any(
                u.relay == source and u.state is UseState.ENROLLED for u in await self.db.using()
            ):
                self._own(self._fetch_quietly(source))
        else:
            await stream.send(Answer(Code.MALFORMED, "not a request"))

    async def _record_request(
        self, source: bytes, msg: RecordRequest, now: float
    ) -> tuple[Code, str]:
        if msg.type is FrameType.ANNOUNCE:
            return await self._keep_record(source, msg.record)
        try:
            record: Record = verify_record(msg.record)
        except SealError as exc:
            return Code.BAD_SIGNATURE, str(exc)
        want = RecordKind.ENROLL if msg.type is FrameType.ENROLL else RecordKind.LEAVE
        if record.kind is not want or record.owner != source:
            return Code.MALFORMED, "the record is not the requester's own of that kind"
        if record.keys != (self.node.key,):
            return Code.NOT_FOR_ME, "the record names another relay"
        if abs(record.time_ms / 1000 - now) > RECORD_SKEW:
            return Code.STALE, "the record's time is too far from ours"
        if want is RecordKind.LEAVE:
            await self.db.leave(source)
            return Code.OK, ""
        code = await self.db.enroll(source, now)
        if code is not Code.OK:
            return code, "this relay's owner has not allowed you (mesh relay allow)"
        log.info("relay: %s enrolled", source.hex()[:16])
        return Code.OK, ""

    def _notify(self, recipient: bytes) -> None:
        if recipient in self._notifying:
            return
        self._notifying.add(recipient)

        async def notify() -> None:
            try:
                async with asyncio.timeout(NOTIFY_TIMEOUT):
                    async with self._connect(recipient, timeout=NOTIFY_TIMEOUT) as stream:
                        await stream.send(Notify(1))
                        await stream.receive()
            except (OSError, TimeoutError, WireError, MeshError) as exc:
                log.debug("relay: could not notify %s: %s", recipient.hex()[:16], exc)
            finally:
                self._notifying.discard(recipient)

        self._own(notify())

    async def _fetch_quietly(self, relay: bytes) -> None:
        try:
            await self.fetch(relay)
        except (OSError, TimeoutError, WireError, MeshError) as exc:
            log.info("relay: fetch from %s failed: %s", relay.hex()[:16], exc)

    # -- the owner's commands ----------------------------------------------------------------
    async def allow(self, key: bytes) -> None:
        await self.db.allow(key, self.clock())

    async def deny(self, key: bytes) -> None:
        await self.db.deny(key)

    async def status(self) -> dict[str, Any]:
        contacts = {c.key: c for c in await self.node.contacts.list()}

        def alias(key: bytes) -> str | None:
            c = contacts.get(key)
            return c.alias if c is not None else None

        return {
            "serving": [
                {"key": h.key.hex(), "alias": alias(h.key), "held": h.held, "bytes": h.bytes}
                for h in await self.db.serving()
            ],
            "using": [
                {
                    "key": u.relay.hex(),
                    "alias": alias(u.relay),
                    "state": u.state.value,
                    "last_fetch": u.last_fetch,
                }
                for u in await self.db.using()
                if u.state is not UseState.LEAVING
            ],
            "contacts": [
                {"key": k.hex(), "alias": alias(k), "relays": [r.hex() for r in relays]}
                for k, relays in sorted((await self.db.contact_relays()).items())
            ],
        }

    def control_methods(self) -> dict[str, Callable[[dict[str, Any]], Awaitable[Any]]]:
        async def named(params: dict[str, Any]) -> bytes:
            name = params.get("name")
            if not isinstance(name, str):
                raise UsageError("name a relay or person by KEY or ALIAS")
            return await self.resolve(name)

        async def allow(params: dict[str, Any]) -> dict[str, Any]:
            key = await named(params)
            await self.allow(key)
            return {"key": key.hex(), "allowed": True}

        async def deny(params: dict[str, Any]) -> dict[str, Any]:
            key = await named(params)
            await self.deny(key)
            return {"key": key.hex(), "allowed": False}

        async def use(params: dict[str, Any]) -> dict[str, Any]:
            key = await named(params)
            state = await self.use(key)
            return {"key": key.hex(), "state": state.value}

        async def drop(params: dict[str, Any]) -> dict[str, Any]:
            key = await named(params)
            await self.drop(key)
            return {"key": key.hex(), "dropped": True}

        async def status(params: dict[str, Any]) -> dict[str, Any]:
            return await self.status()

        async def fetch(params: dict[str, Any]) -> dict[str, Any]:
            await self.fetch_all()
            return {"fetched": True}

        return {
            "relay.allow": allow,
            "relay.deny": deny,
            "relay.use": use,
            "relay.drop": drop,
            "relay.status": status,
            "relay.fetch": fetch,
        }

    # -- connections ------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _connect_cm(self, key: bytes, timeout: float | None) -> Any:
        reader, writer = await self.node.open_connection(
            address_for_key(key), self.port, timeout=timeout or self.config.connect_timeout
        )
        stream = FrameStream(reader, writer, timeout=self.config.io_timeout)
        try:
            yield stream
        finally:
            await stream.close()

    def _connect(self, key: bytes, timeout: float | None = None) -> Any:
        return self._connect_cm(key, timeout)

    async def _ask(self, key: bytes, msg: Any) -> Answer:
        async with self._connect(key) as stream:
            await stream.send(msg)
            answer = await stream.receive()
        if not isinstance(answer, Answer):
            raise WireError(f"expected an answer, got {answer!r}")
        return answer


async def _nothing(entry: OutboxEntry) -> None:
    return None
