"""The queue runner: delivers queued mail over the mesh, retries, expires, bounces.

One long-lived task (owned by the mail service) loops: file Sent copies still missing,
start due deliveries up to ``concurrency`` at once (each its own task in the runner's
TaskGroup), then sleep until the next due time or until :meth:`QueueRunner.wake`.

Per delivery: mail to this node itself goes straight into its INBOX; other recipients
get one SMTP transaction to ``[their address]:MESH_SMTP_PORT``. 250 → delivered;
4xx, timeout or no connection → retry with exponential backoff (and jitter) until the
message is ``expire_after`` old; 5xx or expiry → an RFC 3464 bounce in the own INBOX.
Every step that touches the mail store uses a dedup key, so replaying it after a crash
stores nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable

from core.backend import NodeEvent
from core.errors import MeshError, UsageError
from core.mailaddr import MailAddress, parse_mail_address

from .config import MailConfig
from .dsn import MAILER_DAEMON, Bounce, build_dsn, status_from_reply
from .message import dedup_key, header_fields, received_header
from .ports import Connector, MailSink
from .queue import Delivery, OutboxQueue
from .smtp_client import ClientTransaction, run_transaction

__all__ = ["QueueRunner"]

log = logging.getLogger(__name__)

MAX_IDLE_WAIT = 60.0  # re-check the queue at least this often (clock changes, missed wakes)
ERROR_PAUSE = 1.0  # after an unexpected failure of the loop itself


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
    ) -> None:
        self.publish = publish
        self.queue = queue
        self.sink = sink
        self.own = own
        self.connector = connector
        self.config = config
        self._clock = clock
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._inflight: set[int] = set()

    def wake(self) -> None:
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    async def run(self) -> None:
        """Run until cancelled (the owner cancels and awaits on close)."""
        async with asyncio.TaskGroup() as tg:
            while True:
                self._wake.clear()
                try:
                    wait = await self._pass(tg)
                except Exception:
                    log.exception("mail queue: a queue pass failed; retrying shortly")
                    wait = ERROR_PAUSE
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)

    async def _pass(self, tg: asyncio.TaskGroup) -> float:
        await self.store_sent_copies()
        now = self._clock()
        free = self.config.concurrency - len(self._inflight)
        if free > 0:
            for delivery in await self.queue.due(now, limit=free, exclude=self._inflight):
                self._inflight.add(delivery.id)
                tg.create_task(self._deliver(delivery), name=f"mail-delivery-{delivery.id}")
        next_due = await self.queue.next_due(exclude=self._inflight)
        if next_due is None:
            return MAX_IDLE_WAIT
        return min(MAX_IDLE_WAIT, max(0.0, next_due - self._clock()))

    async def store_sent_copies(self) -> int:
        """File the Sent copy of every queued message that lacks one; returns how many."""
        done = 0
        for message, token, raw in await self.queue.unsent_copies():
            await self.sink.deliver("Sent", raw, flags=("\\Seen",), dedup_key=f"sent|{token}")
            await self.queue.mark_sent_copy(message)
            done += 1
        return done

    def _announce(self, uid: int, sender: str, subject: str) -> None:
        if self.publish is not None:
            data = {"mailbox": "INBOX", "uid": uid, "from": sender, "subject": subject}
            self.publish(NodeEvent("mail.new", data))

    # -- one delivery -----------------------------------------------------------------------
    async def _deliver(self, delivery: Delivery) -> None:
        try:
            await self._attempt(delivery)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("mail queue: delivery %d to %s failed", delivery.id, delivery.recipient)
            try:
                await self._retry(delivery, f"internal error: {exc}")
            except Exception:
                log.exception("mail queue: could not reschedule delivery %d", delivery.id)
        finally:
            self._inflight.discard(delivery.id)
            self._wake.set()

    async def _attempt(self, delivery: Delivery) -> None:
        raw = await self.queue.raw(delivery.message)
        if raw is None:
            return
        try:
            rcpt = parse_mail_address(delivery.recipient)
        except UsageError as exc:
            await self._bounce(delivery, raw, str(exc), "5.1.3")
            return
        if rcpt == self.own:
            await self._deliver_locally(delivery, raw)
            return
        txn = ClientTransaction(
            helo_name=f"[IPv6:{self.own.node_address}]",
            mail_from=str(self.own),
            recipients=[str(rcpt)],
            content=raw,
        )
        timeout = self.config.io_timeout
        try:
            reader, writer = await asyncio.wait_for(
                self.connector.open_connection(rcpt.node_address, self.config.mesh_port), timeout
            )
        except (OSError, TimeoutError, MeshError) as exc:
            reason = str(exc) or type(exc).__name__
            await self._retry(delivery, f"cannot connect to [{rcpt.node_address}]: {reason}")
            return
        outcome = await run_transaction(txn, reader, writer, timeout=timeout)
        if str(rcpt) in outcome.delivered:
            log.info("mail queue: delivered %s to %s", delivery.message_id, rcpt)
            await self.queue.mark_delivered(delivery.id, now=self._clock())
        elif str(rcpt) in outcome.permanent:
            reason = outcome.permanent[str(rcpt)]
            await self._bounce(delivery, raw, reason, status_from_reply(reason))
        else:
            await self._retry(delivery, outcome.temporary.get(str(rcpt), outcome.error or "?"))

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
        expires = delivery.created + self.config.retry.expire_after
        if now >= expires:
            await self._bounce(
                delivery,
                None,
                f"gave up after {delivery.attempts + 1} attempts; last error: {reason}",
                "4.4.7",
            )
            return
        delay = self.config.retry.delay(delivery.attempts + 1, self._rng)
        next_attempt = min(now + delay, expires)
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
            remote = str(parse_mail_address(delivery.recipient).node_address)
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
