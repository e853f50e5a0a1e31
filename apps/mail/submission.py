"""Submission SMTP on 127.0.0.1: where the person's mail client sends.

* AUTH PLAIN / LOGIN against the scrypt record (no record, no server: see
  :mod:`apps.mail.passwords`). Plain-text AUTH is allowed without TLS because the
  server listens on loopback only; nothing crosses a network.
* ``MAIL FROM`` and the header ``From:`` (and ``Sender:``) must be one of this node's own
  addresses (``key@mesh`` or ``key@yggmail``), and no display name there may show another
  address (refused, see docs/mail.md).
* any number of ``<key>@mesh`` and ``<key>@yggmail`` recipients, this node included
  (mail to oneself goes to the own INBOX like any other); other domains are refused at
  RCPT with a clear reply, and so is ``@yggmail`` when the node has no Yggmail transport
  (the daemon backend: ``yggmail_unavailable`` says why).
* the message and one delivery per recipient are committed to the queue in one
  transaction before 250; the queue runner is woken to deliver and to file the Sent copy.
"""

from __future__ import annotations

import logging
from base64 import b64decode
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import MISSING, AuthResult

from core import MAIL_DOMAINS, MailAddress, UsageError, parse_mail_address

from .message import author_problem, ensure_submission_headers, header_fields
from .passwords import LoginBusy, PasswordVerifier
from .queue import OutboxQueue, QueueFull
from .smtp_server import ehlo_with_pipelining

__all__ = ["SubmissionHandler"]

log = logging.getLogger(__name__)

MAX_AUTH_FAILURES = 5  # per connection, then the connection is closed


class SubmissionHandler:
    """aiosmtpd hooks (and AUTH mechanisms) for the local submission server."""

    def __init__(
        self,
        *,
        own: MailAddress,
        verifier: PasswordVerifier,
        queue: OutboxQueue,
        on_queued: Callable[[], None],
        max_recipients: int = 100,
        max_queue: int = 10_000,
        yggmail_unavailable: str | None = None,
    ) -> None:
        self.yggmail_unavailable = yggmail_unavailable  # None: @yggmail can be reached
        self.own = own
        self.verifier = verifier
        self.queue = queue
        self.on_queued = on_queued
        self.max_recipients = max_recipients
        self.max_queue = max_queue

    # -- AUTH (replaces aiosmtpd's built-ins so that scrypt runs off the event loop) -----
    async def auth_PLAIN(self, server: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob = await server.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            try:
                blob = b64decode(args[1].encode(), validate=True)
            except ValueError:
                await server.push("501 5.5.2 cannot decode base64")
                return AuthResult(success=False, handled=True)
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await server.push("501 5.5.2 AUTH PLAIN wants authzid NUL user NUL password")
            return AuthResult(success=False, handled=True)
        return await self._login(server, parts[1], parts[2])

    async def auth_LOGIN(self, server: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            user = await server.challenge_auth(server.AuthLoginUsernameChallenge)
            if user is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            try:
                user = b64decode(args[1].encode(), validate=True)
            except ValueError:
                await server.push("501 5.5.2 cannot decode base64")
                return AuthResult(success=False, handled=True)
        password = await server.challenge_auth(server.AuthLoginPasswordChallenge)
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        return await self._login(server, user, password)

    async def _login(self, server: Any, user: bytes, password: bytes) -> AuthResult:
        # Guessing is slowed node-wide (IMAP included) by the verifier's LoginThrottle.
        try:
            ok = await self.verifier.check(user, password)
        except LoginBusy as exc:
            await server.push(f"454 4.7.0 {exc}")
            return AuthResult(success=False, handled=True)
        if ok:
            return AuthResult(success=True, auth_data=user.decode("utf-8", "replace"))
        failures = getattr(server.session, "mesh_auth_failures", 0) + 1
        server.session.mesh_auth_failures = failures
        if failures >= MAX_AUTH_FAILURES:
            await server.push("421 4.7.0 too many failed logins; closing")
            server.transport.close()
            return AuthResult(success=False, handled=True)
        return AuthResult(
            success=False,
            handled=False,
            message=(
                f"535 5.7.8 login refused: the user is your mail address <{self.own}> and the "
                "password is the one set with `mesh mail passwd`"
            ),
        )

    # -- the transaction --------------------------------------------------------------------
    def _auth_needed(self, session: Any) -> str | None:
        if session.authenticated:
            return None
        return (
            f"530 5.7.0 log in first (AUTH PLAIN or LOGIN): user <{self.own}>, "
            "password from `mesh mail passwd`"
        )

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        return ehlo_with_pipelining(session, hostname, responses)

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        if (refusal := self._auth_needed(session)) is not None:
            return refusal
        try:
            sender = parse_mail_address(address, MAIL_DOMAINS)
        except UsageError:
            sender = None
        if sender is None or sender.key != self.own.key:
            return (
                f"553 5.7.1 the sender must be this node's address <{self.own}> "
                f"(or <{self.own.key.hex()}@yggmail>)"
            )
        envelope.mail_from = str(sender)
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 sender ok"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if (refusal := self._auth_needed(session)) is not None:
            return refusal
        try:
            rcpt = parse_mail_address(address, MAIL_DOMAINS)
        except UsageError as exc:
            log.info("submission: refused recipient <%s>: %s", address, exc)
            return (
                "550 5.1.2 only <key>@mesh and <key>@yggmail addresses are reachable "
                "(64 hex characters @mesh or @yggmail)"
            )
        if rcpt.yggmail and rcpt.key != self.own.key and self.yggmail_unavailable:
            log.info("submission: refused Yggmail recipient <%s>: no transport", address)
            why = self.yggmail_unavailable
            return f"550 5.3.3 <{rcpt}> cannot be reached from this node: {why}"
        if str(rcpt) in envelope.rcpt_tos:
            return "250 2.1.5 recipient ok (duplicate ignored)"
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return f"452 4.5.3 at most {self.max_recipients} recipients per message"
        envelope.rcpt_tos.append(str(rcpt))
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 recipient ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = bytes(envelope.original_content or b"")
        fields = header_fields(raw)
        problem = author_problem(fields, str(self.own))
        if problem is not None and author_problem(fields, str(self.own.on("yggmail"))) is None:
            problem = None  # From: our key@yggmail
        if problem is not None:  # refused, not rewritten (docs/mail.md)
            log.info("submission: refused a message: %s", problem)
            return f"550 5.7.1 {problem} (this node's address)"
        message, mid = ensure_submission_headers(
            raw, domain=f"{self.own.key.hex()[:16]}.mesh", fields=fields
        )
        try:
            queued = await self.queue.enqueue(
                str(self.own), message, mid, envelope.rcpt_tos, max_queue=self.max_queue
            )
        except QueueFull as exc:
            log.warning("submission: %s", exc)
            return "452 4.3.1 the outbound queue is full; try again later"
        except Exception:
            log.exception("submission: could not queue a message")
            return "451 4.3.0 could not queue the message; try again later"
        log.info(
            "submission: queued message %d %s for %d recipient(s)",
            queued.id,
            mid,
            len(envelope.rcpt_tos),
        )
        self.on_queued()
        return f"250 2.0.0 queued as {queued.id}"
