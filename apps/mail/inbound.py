"""Mesh SMTP, inbound: the aiosmtpd handler that takes mail from other nodes.

aiosmtpd owns the grammar and RFC limits; this handler owns the decisions:

* ``MAIL FROM:<key@mesh>`` must be the connecting node: the backend authenticated the
  peer's mesh address, and it must equal ``address_for_key(key)`` (and, where the
  backend knows it, the full key must match too). Otherwise 550 and a warning in the log.
  The same handler serves Yggmail's transport with ``domain="yggmail"``: there the
  stream's ``peer_key`` (the QUIC peer, checked against its certificate) is the node.
  Refusals stay 550 (a meshsuite sender bounces at once; Yggmail's sender retries
  whatever the code).
* every ``RCPT TO`` must be this node (``<our key>@<domain>``): never relay (550).
* the header ``From:`` (and ``Sender:``) must be the envelope sender (its key in either
  domain, ``@mesh`` or ``@yggmail``) and no display name there may show another
  address, so a client shows the real author (refused, not rewritten: docs/mail.md).
* per-peer token buckets bound how fast one node may send (450 when empty).
* the message is committed to the store (with a ``Received:`` field naming both mesh
  addresses) BEFORE 250 is sent. A replay of a message already stored (same Message-ID
  from the same key) gets 250 too, so its sender stops, but is not stored twice.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from collections import Counter
from collections.abc import Callable
from typing import Any

from core import (
    MAIL_DOMAIN,
    MAIL_DOMAINS,
    YGGMAIL_DOMAIN,
    MailAddress,
    NodeEvent,
    PeerRateLimiter,
    RelayVerdict,
    UsageError,
    address_for_key,
    parse_mail_address,
    peer_address,
    peer_key,
)

from .message import author_problem, dedup_key, header_fields, received_header
from .ports import MailSink
from .smtp_server import ehlo_with_pipelining

__all__ = ["MeshInboundHandler"]

log = logging.getLogger(__name__)

EventPublisher = Callable[[NodeEvent], None]


def _peer(server: Any) -> tuple[ipaddress.IPv6Address | None, bytes | None]:
    """The connection's authenticated mesh address and key (core's helpers)."""
    transport = server.transport
    if transport is None:
        return None, None
    key = peer_key(transport)
    address = peer_address(transport)
    if address is None and key is not None:  # a QUIC stream: the key is the peer
        address = address_for_key(key)
    return address, key


class MeshInboundHandler:
    """aiosmtpd hooks for mail arriving from the mesh."""

    def __init__(
        self,
        *,
        own: MailAddress,
        sink: MailSink,
        limiter: PeerRateLimiter,
        publish: EventPublisher | None = None,
        max_recipients: int = 100,
        domain: str = MAIL_DOMAIN,
    ) -> None:
        self.domain = domain
        self.own = own.on(domain)
        # Refusals by reason, for ``mesh status`` (the mail service's endpoints).
        self.refused: Counter[str] = Counter()
        self.sink = sink
        self.limiter = limiter
        self.publish = publish
        self.max_recipients = max_recipients

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        return ehlo_with_pipelining(session, hostname, responses)

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        peer_addr, peer_key = _peer(server)
        if peer_addr is None:
            return "421 4.7.0 cannot tell who you are; closing"
        if not self.limiter.allow(peer_addr):
            log.warning("mesh smtp: rate limit hit by [%s]", peer_addr)
            self.refused["rate"] += 1
            return f"450 4.7.1 too many messages from [{peer_addr}]; slow down and retry later"
        try:
            sender = parse_mail_address(address, (self.domain,))
        except UsageError:
            self.refused["sender"] += 1
            return f"550 5.1.7 the sender must be a <key>@{self.domain} address"
        if self.domain != MAIL_DOMAIN and peer_key is None:
            return "421 4.7.0 cannot tell who you are; closing"
        if sender.node_address != peer_addr or (peer_key is not None and peer_key != sender.key):
            log.warning(
                "mesh smtp: refused MAIL FROM:<%s> from [%s]: that is not the sending node's key",
                address,
                peer_addr,
            )
            self.refused["sender"] += 1
            return (
                f"550 5.7.1 sender <{address}> is not the node at [{peer_addr}]; "
                f"a node may only send as its own key@{self.domain}"
            )
        envelope.mail_from = str(sender)
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 sender ok"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        try:
            rcpt = parse_mail_address(address, (self.domain,))
        except UsageError:
            rcpt = None
        if rcpt != self.own:
            peer_addr, _ = _peer(server)
            log.info("mesh smtp: refused relay to <%s> from [%s]", address, peer_addr)
            self.refused["relay"] += 1
            return f"550 5.7.1 relaying denied: this node only takes mail for <{self.own}>"
        if str(rcpt) in envelope.rcpt_tos:
            return "250 2.1.5 recipient ok (duplicate ignored)"
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return "452 4.5.3 too many recipients"
        envelope.rcpt_tos.append(str(rcpt))
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 recipient ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        peer_addr, peer_key = _peer(server)
        raw = bytes(envelope.original_content or b"")
        return await self.accept(peer_addr, peer_key, envelope.mail_from, raw)

    async def from_relay(self, sender_key: bytes, body: bytes) -> RelayVerdict:
        """A mail fetched from a relay (core.relay), sealed and signed by ``sender_key``:
        ``<mail from>\r\n<message>``. The envelope sender must be that key (as MAIL FROM
        must be the connecting node), then the same checks and store as over SMTP."""
        head, sep, raw = body.partition(b"\r\n")
        try:
            sender = parse_mail_address(head.decode("ascii"), (MAIL_DOMAIN,))
        except (UnicodeDecodeError, UsageError):
            sender = None
        if not sep or sender is None or sender.key != sender_key:
            log.warning("mesh smtp: refused a relayed mail: its sender is not the sealing key")
            return RelayVerdict.REFUSED
        reply = await self.accept(address_for_key(sender_key), sender_key, str(sender), raw)
        if reply.startswith("2"):
            return RelayVerdict.ACCEPTED
        return RelayVerdict.RETRY if reply.startswith("4") else RelayVerdict.REFUSED

    async def accept(
        self, peer_addr: Any, peer_key: bytes | None, mail_from: str, raw: bytes
    ) -> str:
        """Check and store one message from ``mail_from`` (already matched to the node
        that sent it); the SMTP reply."""
        sender = parse_mail_address(mail_from, MAIL_DOMAINS)
        fields = header_fields(raw)
        problem = author_problem(fields, str(sender))  # From, Sender, display names
        # The key is what the transport proved, whichever of its two addresses the header
        # shows: From: key@yggmail over the mesh, or key@mesh over Yggmail's transport.
        other = YGGMAIL_DOMAIN if sender.domain == MAIL_DOMAIN else MAIL_DOMAIN
        if problem is not None and author_problem(fields, str(sender.on(other))) is None:
            problem = None
        if problem is not None:
            log.warning("mesh smtp: refused a message from [%s]: %s", peer_addr, problem)
            self.refused["author"] += 1
            return f"550 5.7.1 {problem}, the envelope sender"
        ident = secrets.token_hex(8)
        stamped = (
            received_header(
                from_address=str(peer_addr),
                from_key=peer_key.hex() if peer_key else sender.key.hex(),
                by_address=str(self.own.node_address),
                recipient=str(self.own),
                ident=ident,
            )
            + raw
        )
        key = dedup_key(fields, raw, sender.key.hex())
        try:
            uid = await self.sink.deliver("INBOX", stamped, dedup_key=key)
        except Exception:
            log.exception("mesh smtp: could not store a message from [%s]", peer_addr)
            return "451 4.3.0 could not store the message here; try again later"
        if uid is None:
            log.info("mesh smtp: duplicate from <%s> (%s) acknowledged, not stored", sender, key)
            return "250 2.0.0 already delivered"
        log.info("mesh smtp: stored mail from <%s> as INBOX uid %d (id %s)", sender, uid, ident)
        if self.publish is not None:
            subject = str(fields.get("Subject", ""))[:200]
            self.publish(
                NodeEvent(
                    "mail.new",
                    {"mailbox": "INBOX", "uid": uid, "from": str(sender), "subject": subject},
                )
            )
        return f"250 2.0.0 stored as {ident}"
