"""Delivery status notifications (bounces): RFC 3464 ``multipart/report`` messages.

A bounce goes into the sender's own INBOX (it never crosses the mesh): three parts, a
text explanation, the machine-readable ``message/delivery-status`` (one per-recipient
block) and the original message's header (``text/rfc822-headers``, RFC 6522).
"""

from __future__ import annotations

import email.utils
import re
import secrets
import time
from dataclasses import dataclass

from .message import split_header

__all__ = ["MAILER_DAEMON", "Bounce", "build_dsn", "status_from_reply"]

MAILER_DAEMON = "MAILER-DAEMON@mesh"
_ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_REPLY_CODE = re.compile(r"\b([45])\d\d\b")
_UNSAFE = re.compile(r"[\r\n]+")


@dataclass(frozen=True, slots=True)
class Bounce:
    """Why one recipient failed for good."""

    recipient: str
    status: str  # RFC 3463 enhanced status, e.g. "5.1.1" or "4.4.7"
    diagnostic: str  # the remote reply or our reason, one line
    remote_mta: str | None = None  # the recipient node's mesh address
    last_attempt: float | None = None


def status_from_reply(text: str, *, expired: bool = False) -> str:
    """An RFC 3463 status for a failure text: the server's own if it gave one."""
    if expired:
        return "4.4.7"
    m = _ENHANCED.search(text)
    if m:
        return ".".join(m.groups())
    code = _REPLY_CODE.search(text)
    if code:
        return f"{code.group(1)}.0.0"
    return "4.4.1"  # no answer from the host


def _one_line(text: str) -> str:
    return _UNSAFE.sub(" ", text).strip()


def _date(stamp: float) -> str:
    return email.utils.formatdate(stamp, localtime=False)


def build_dsn(
    *,
    reporting_node: str,
    original: bytes,
    bounces: list[Bounce],
    arrival: float,
    now: float | None = None,
) -> bytes:
    """The bounce message (CRLF bytes) for ``original`` and its failed recipients.

    ``reporting_node`` is this node's ``key@mesh``; the bounce is addressed to it.
    """
    if not bounces:
        raise ValueError("a DSN needs at least one failed recipient")
    stamp = time.time() if now is None else now
    boundary = f"=_dsn_{secrets.token_hex(12)}"
    header, _ = split_header(original)
    names = ", ".join(b.recipient for b in bounces)
    expired = any(b.status == "4.4.7" for b in bounces)
    reason = "could not be delivered in the time allowed" if expired else "could not be delivered"
    human = [
        f"Your message {reason} to: {names}",
        "",
        *(f"  {b.recipient}: {_one_line(b.diagnostic)}" for b in bounces),
        "",
        "The header of your message follows at the end of this report.",
        "",
    ]
    status_fields = [
        f"Reporting-MTA: x-mesh; {reporting_node}",
        f"Arrival-Date: {_date(arrival)}",
        "",
    ]
    for b in bounces:
        status_fields += [
            f"Final-Recipient: rfc822; {b.recipient}",
            "Action: failed",
            f"Status: {b.status}",
        ]
        if b.remote_mta:
            status_fields.append(f"Remote-MTA: x-mesh; {b.remote_mta}")
        status_fields.append(f"Diagnostic-Code: smtp; {_one_line(b.diagnostic)}")
        if b.last_attempt is not None:
            status_fields.append(f"Last-Attempt-Date: {_date(b.last_attempt)}")
        status_fields.append("")
    lines = [
        f"From: Mail Delivery System <{MAILER_DAEMON}>",
        f"To: <{reporting_node}>",
        f"Subject: Undelivered mail: {names}"[:900],
        f"Date: {_date(stamp)}",
        f"Message-ID: <dsn.{secrets.token_hex(12)}@mesh>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a delivery status notification (RFC 3464).",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        *human,
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        *status_fields,
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "",
    ]
    head = "\r\n".join(lines).encode("utf-8") + b"\r\n"
    original_header = header.rstrip(b"\r\n") + b"\r\n"
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + original_header + tail
