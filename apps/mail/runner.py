"""The queue runner: delivers queued mail over the mesh, retries, expires, bounces.

One long-lived task (owned by the mail service) runs two loops, both core's
:class:`~core.Scheduler` (the durable outbox's loop): one files Sent copies still
missing; the other starts due deliveries up to ``concurrency`` at once (each its own
task in its TaskGroup), then sleeps until the next due time or until
:meth:`QueueRunner.wake`. A recipient node that comes up (``peer.up`` / ``session.up``
naming its key) is retried at once.

Per delivery: mail to this node itself (either of its addresses) goes straight into its
INBOX; other ``@mesh`` recipients get one SMTP transaction to
``[their address]:MESH_SMTP_PORT``; ``@yggmail`` recipients one over Yggmail's transport
(a QUIC stream to their key, :class:`~apps.mail.ports.KeyConnector`), with envelope
sender and HELO name as Yggmail requires (``<our key>@yggmail``, our key in hex). 250 → delivered;
4xx, timeout or no connection → retry with exponential backoff (and jitter) until the
message is ``expiry`` old (core's :class:`~core.RetryPolicy`); 5xx or expiry → an
RFC 3464 bounce in the own INBOX.
Every step that touches the mail store uses a dedup key, so replaying it after a crash
stores nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from core import (
    MAIL_DOMAINS,
    YGGMAIL_DOMAIN,
    EventBus,
    MailAddress,
    MeshError,
    NodeEvent,
    Scheduler,
    UsageError,
    parse_mail_address,
    watch_reachable,
    within,
)

from .config import MailConfig
from .dsn import MAILER_DAEMON, Bounce, build_dsn, status_from_reply
from .message import dedup_key, header_fields, received_header, strip_bcc
from .ports import Connector, KeyConnector, MailSink
from .queue import Delivery, OutboxQueue
from .smtp_client import ClientSession, Envelope, run_session

__all__ = ["QueueRunner"]

log = logging.getLogger(__name__)

MAX_BATCH = 20  # messages to one node in one SMTP session


def _batches(due: list[Delivery], limit: int) -> list[list[Delivery]]:
    """Due deliveries grouped by recipient, at most :data:`MAX_BATCH` a group, oldest first."""
    groups: dict[str, list[list[Delivery]]] = {}
    order: list[list[Delivery]] = []
    for delivery in due:
        chunks = groups.setdefault(delivery.recipient, [])
        if not chunks or len(chunks[-1]) >= MAX_BATCH:
            chunks.append([])
            order.append(chunks[-1])
        chunks[-1].append(delivery)
    return order[:limit]


COPY_RETRY_INITIAL, COPY_RETRY_MAX = 5.0, 600.0  # seconds: a Sent copy that cannot be filed


@dataclass(slots=True)
class CopyFailure:
    """Sent copies that could not be filed: retried with backoff, shown in the queue."""

    since: float
    attempts: int
    next_attempt: float
    last_error: str


def _ids(busy: set[Hashable]) -> set[int]:
    return {key for key in busy if isinstance(key, int)}


class QueueRunner:
    def __init__(
        self,
        *,
        queue: OutboxQueue,
        sink: MailSink,
        own: MailAddress,
        connector: Connector,
        config: MailConfig,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        publish: Callable[[NodeEvent], None] | None = None,
        events: EventBus | None = None,
        yggmail: KeyConnector | None = None,
        yggmail_unavailable: str = "this node has no Yggmail transport",
        relay: Any = None,
    ) -> None:
        # the node's relay service (core.relay): a @mesh delivery still failing
        # handoff_after seconds after it was queued goes, sealed, to a relay the
        # recipient announced, and counts as delivered (as a hand-off to a smarthost)
        self.relay = relay
        self.publish = publish
        self.yggmail = yggmail  # None: @yggmail recipients are retried, then bounce
        self.yggmail_unavailable = yggmail_unavailable
        self.events = events  # peer.up / session.up: retry that recipient node at once
        self.queue = queue
        self.sink = sink
        self.own = own
        self.connector = connector
        self.config = config
        self._clock = clock
        self._rng = rng or random.Random()
        self.copy_failure: CopyFailure | None = None
        self._copies: Scheduler[list[tuple[int, str, bytes]]] = Scheduler(
            name="mail-sent-copies",
            find=self._unsent,
            keys=lambda batch: [message for message, _, _ in batch],
            next_due=self._copy_next_due,
            run=self._copy_round,
            concurrency=1,
            clock=clock,
        )
        self._scheduler: Scheduler[list[Delivery]] = Scheduler(
            name="mail-delivery",
            find=self._due,
            keys=lambda batch: [d.id for d in batch],
            next_due=lambda busy: self.queue.next_due(exclude=_ids(busy)),
            run=self._deliver,
            concurrency=config.concurrency,
            clock=clock,
        )

    def wake(self) -> None:
        self._scheduler.wake()
        self._copies.wake()

    @property
    def in_flight(self) -> int:
        """Deliveries being attempted now."""
        return len(self._scheduler.busy)

    async def run(self) -> None:
        """Run until cancelled (the owner cancels and awaits on close)."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._copies.run(), name="mail-sent-copies")
            if self.events is not None:
                tg.create_task(watch_reachable(self.events, self.retry_now), name="mail-wake")
            await self._scheduler.run()

    async def retry_now(self, key: bytes) -> None:
        """The node ``key`` is reachable: its deferred deliveries are due now."""
        for domain in MAIL_DOMAINS:
            rcpt = str(MailAddress(key, domain))
            if await self.queue.retry_now(rcpt, now=self._clock()):
                log.info("mail queue: %s is reachable; retrying its mail now", rcpt)
                self._scheduler.wake()

    async def _due(self, now: float, free: int, busy: set[Hashable]) -> list[list[Delivery]]:
        due = await self.queue.due(now, limit=free * MAX_BATCH, exclude=_ids(busy))
        return _batches(due, free)

    async def _copy_next_due(self, busy: set[Hashable]) -> float | None:
        # Due when woken (or at the scheduler's idle re-check); after a failure, at its retry.
        return None if self.copy_failure is None else self.copy_failure.next_attempt

    async def _unsent(
        self, now: float, free: int, busy: set[Hashable]
    ) -> list[list[tuple[int, str, bytes]]]:
        if busy:  # one round at a time
            return []
        if self.copy_failure is not None and now < self.copy_failure.next_attempt:
            return []  # backing off
        batch = await self.queue.unsent_copies()
        return [batch] if batch else []

    async def _copy_round(self, batch: list[tuple[int, str, bytes]]) -> None:
        await self._file_copies(batch)

    async def _file_copies(self, batch: list[tuple[int, str, bytes]]) -> bool:
        """File a round of Sent copies; False (and a retry with backoff) if they failed."""
        try:
            # The mailbox with \Sent, wherever the person renamed it; re-created if deleted.
            sent = await self.sink.special_mailbox("\\Sent", "Sent")
            async with asyncio.TaskGroup() as tg:
                for _message, token, raw in batch:
                    tg.create_task(
                        self.sink.deliver(sent, raw, flags=("\\Seen",), dedup_key=f"sent|{token}")
                    )
        except Exception as exc:
            self._copies_failed(exc)
            return False
        await self.queue.mark_sent_copies([message for message, _, _ in batch])
        if self.copy_failure is not None:
            log.info("mail queue: Sent copies are filed again (in %r)", sent)
            self.copy_failure = None
        return True

    def _copies_failed(self, exc: Exception) -> None:
        while isinstance(exc, ExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
        reason = str(exc) or type(exc).__name__
        now = self._clock()
        old = self.copy_failure
        attempts = 1 if old is None else old.attempts + 1
        delay = min(COPY_RETRY_MAX, COPY_RETRY_INITIAL * 2 ** (attempts - 1))
        self.copy_failure = CopyFailure(
            now if old is None else old.since, attempts, now + delay, reason
        )
        # Once per new reason, not once per attempt: a broken store must not flood the log.
        level = logging.WARNING if old is None or old.last_error != reason else logging.DEBUG
        log.log(level, "mail queue: cannot file Sent copies (%s); retry in %.0f s", reason, delay)

    def copy_rows(self) -> list[dict[str, Any]]:
        """Sent copies waiting after a failure, as rows of ``mesh mail queue``."""
        failure = self.copy_failure
        if failure is None:
            return []
        return [
            {
                "delivery": None,
                "message": None,
                "message_id": "(Sent copies)",
                "recipient": "Sent mailbox (local copy)",
                "attempts": failure.attempts,
                "queued_at": failure.since,
                "next_attempt": failure.next_attempt,
                "last_error": failure.last_error,
            }
        ]

    async def store_sent_copies(self) -> int:
        """File the Sent copy of every queued message that lacks one; returns how many.

        Each copy is committed to the store under the key ``sent|<token>`` before the
        queue learns of it (in one batch per round): a crash in between files nothing
        twice. The copies of a round are handed to the store together, so they share
        its transactions (group commit) instead of paying one fsync each.
        """
        done = 0
        while batch := await self.queue.unsent_copies():
            if not await self._file_copies(batch):
                break
            done += len(batch)
        return done

    def _announce(self, uid: int, sender: str, subject: str) -> None:
        if self.publish is not None:
            data = {"mailbox": "INBOX", "uid": uid, "from": sender, "subject": subject}
            self.publish(NodeEvent("mail.new", data))

    # -- one session: deliveries to one recipient -------------------------------------------
    async def _deliver(self, batch: list[Delivery]) -> None:
        try:
            await self._attempt(batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("mail queue: delivery to %s failed", batch[0].recipient)
            for delivery in batch:  # a no-op for the ones already marked
                try:
                    await self._retry(delivery, f"internal error: {exc}")
                except Exception:
                    log.exception("mail queue: could not reschedule delivery %d", delivery.id)

    async def _attempt(self, batch: list[Delivery]) -> None:
        raws = {
            k: strip_bcc(v) for k, v in (await self.queue.raws([d.message for d in batch])).items()
        }
        batch = [d for d in batch if d.message in raws]
        if not batch:
            return
        try:
            rcpt = parse_mail_address(batch[0].recipient, MAIL_DOMAINS)
        except UsageError as exc:
            for d in batch:
                await self._bounce(d, raws[d.message], str(exc), "5.1.3")
            return
        if rcpt.key == self.own.key:
            for d in batch:
                await self._deliver_locally(d, raws[d.message])
            return
        timeout = self.config.io_timeout
        where = f"[{rcpt.node_address}]"
        try:
            if rcpt.yggmail:
                where = f"{rcpt.key.hex()} over Yggmail's transport"
                if self.yggmail is None:
                    raise MeshError(self.yggmail_unavailable)
                opening = self.yggmail.open_connection(rcpt.key)
            else:
                opening = self.connector.open_connection(rcpt.node_address, self.config.mesh_port)
            reader, writer = await within(opening, timeout)
        except (OSError, TimeoutError, MeshError) as exc:
            reason = str(exc) or type(exc).__name__
            await self._retry_or_relay(rcpt, batch, raws, f"cannot connect to {where}: {reason}")
            return
        if rcpt.yggmail:  # Yggmail wants our key as HELO name and <key>@yggmail as sender
            sender = self.own.on(YGGMAIL_DOMAIN)
            session = ClientSession(
                self.own.key.hex(),
                [Envelope(str(sender), (str(rcpt),), raws[d.message]) for d in batch],
                preamble="E",
            )
        else:
            session = ClientSession(
                f"[IPv6:{self.own.node_address}]",
                [Envelope(str(self.own), (str(rcpt),), raws[d.message]) for d in batch],
            )
        outcomes = await run_session(session, reader, writer, timeout=timeout)
        delivered = [d for d, o in zip(batch, outcomes, strict=True) if str(rcpt) in o.delivered]
        if delivered:
            await self.queue.mark_delivered_many([d.id for d in delivered], now=self._clock())
            log.info("mail queue: delivered %d message(s) to %s", len(delivered), rcpt)
        for d, outcome in zip(batch, outcomes, strict=True):
            if str(rcpt) in outcome.permanent:
                reason = outcome.permanent[str(rcpt)]
                await self._bounce(d, raws[d.message], reason, status_from_reply(reason))
            elif str(rcpt) not in outcome.delivered:
                why = outcome.temporary.get(str(rcpt), outcome.error or "?")
                await self._retry_or_relay(rcpt, [d], raws, why)

    async def _retry_or_relay(
        self, rcpt: MailAddress, batch: list[Delivery], raws: dict[int, bytes], reason: str
    ) -> None:
        """Deliveries that failed for now: those queued ``handoff_after`` ago or more go to
        a relay of the recipient's if it announced one; the rest (and any a relay did not
        take) are retried."""
        taken: set[int] = set()
        if self.relay is not None and not rcpt.yggmail:
            due = self._clock() - self.relay.config.handoff_after
            ready = [d for d in batch if d.created <= due]
            if ready:
                items = [
                    (f"{d.token}.{d.id}", str(self.own).encode() + b"\r\n" + raws[d.message])
                    for d in ready
                ]
                try:
                    refusals = await self.relay.submit("mail", rcpt.key, items)
                except Exception as exc:
                    log.warning("mail queue: hand-off to a relay failed: %s", exc)
                    refusals = None
                for d, refusal in zip(ready, refusals or [], strict=False):
                    if refusal is None:
                        taken.add(d.id)
                    else:
                        reason = f"{reason}; relays: {refusal}"
                if taken:
                    await self.queue.mark_delivered_many(sorted(taken), now=self._clock())
                    log.info("mail queue: %d message(s) for %s to a relay", len(taken), rcpt)
        for d in batch:
            if d.id not in taken:
                await self._retry(d, reason)

    async def _deliver_locally(self, delivery: Delivery, raw: bytes) -> None:
        fields = header_fields(raw)
        stamp = received_header(
            from_address="127.0.0.1",
            from_key=None,
            by_address=str(self.own.node_address),
            recipient=str(self.own),
            ident=f"local.{delivery.id}",
        )
        key = dedup_key(fields, raw, self.own.key.hex())
        uid = await self.sink.deliver("INBOX", stamp + raw, dedup_key=key)
        log.info("mail queue: delivered %s to own INBOX (uid %s)", delivery.message_id, uid)
        if uid is not None:
            subject = str(fields.get("Subject", ""))[:200]
            self._announce(uid, str(self.own), subject)
        await self.queue.mark_delivered(delivery.id, now=self._clock())

    async def _retry(self, delivery: Delivery, reason: str) -> None:
        now = self._clock()
        retry = self.config.retry
        next_attempt = retry.next_attempt(delivery.created, delivery.attempts + 1, now, self._rng)
        if next_attempt is not None and self.relay is not None:
            handoff_at = delivery.created + self.relay.config.handoff_after
            if handoff_at > now:  # an attempt, then a hand-off, at that time
                next_attempt = min(next_attempt, handoff_at)
        if next_attempt is None:
            await self._bounce(
                delivery,
                None,
                f"gave up after {delivery.attempts + 1} attempts; last error: {reason}",
                "4.4.7",
            )
            return
        log.info(
            "mail queue: %s to %s deferred (%s); attempt %d, next in %.0f s",
            delivery.message_id,
            delivery.recipient,
            reason,
            delivery.attempts + 1,
            next_attempt - now,
        )
        await self.queue.mark_retry(delivery.id, next_attempt, reason, now=now)

    async def _bounce(
        self, delivery: Delivery, raw: bytes | None, reason: str, status: str
    ) -> None:
        if raw is None:
            raw = await self.queue.raw(delivery.message) or b""
        now = self._clock()
        try:
            remote = str(parse_mail_address(delivery.recipient, MAIL_DOMAINS).node_address)
        except UsageError:
            remote = None
        dsn = build_dsn(
            reporting_node=str(self.own),
            original=raw,
            bounces=[Bounce(delivery.recipient, status, reason, remote, now)],
            arrival=delivery.created,
            now=now,
        )
        uid = await self.sink.deliver(
            "INBOX", dsn, dedup_key=f"dsn|{delivery.token}|{delivery.recipient}"
        )
        if uid is not None:
            self._announce(uid, MAILER_DAEMON, f"Undelivered mail: {delivery.recipient}")
        log.warning(
            "mail queue: %s to %s failed for good (%s %s); bounce filed in INBOX",
            delivery.message_id,
            delivery.recipient,
            status,
            reason,
        )
        await self.queue.mark_failed(delivery.id, reason, now=now)
