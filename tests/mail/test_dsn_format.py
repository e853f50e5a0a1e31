"""Bounces are RFC 3464 multipart/report messages that the email package reads back."""

from __future__ import annotations

import email
from email.message import Message
from email.policy import default

from apps.mail.dsn import MAILER_DAEMON, Bounce, build_dsn, status_from_reply

ORIGINAL = (
    b"From: aa@mesh\r\nTo: bb@mesh\r\nSubject: lunch?\r\nMessage-ID: <m1@x>\r\n\r\nsecret body\r\n"
)


def _parse(raw: bytes) -> Message:
    return email.message_from_bytes(raw, policy=default)


def test_dsn_structure_parses_back() -> None:
    raw = build_dsn(
        reporting_node="aa@mesh",
        original=ORIGINAL,
        bounces=[Bounce("bb@mesh", "5.7.1", "RCPT TO: 550 5.7.1 relaying denied", "200::1", 50)],
        arrival=10,
        now=60,
    )
    msg = _parse(raw)
    assert not msg.defects
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert MAILER_DAEMON in msg["From"] and msg["To"].addresses[0].addr_spec == "aa@mesh"
    parts = msg.get_payload()
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    assert "bb@mesh" in parts[0].get_content()
    # message/delivery-status: one per-message block, then one per recipient.
    blocks = parts[1].get_payload()
    assert blocks[0]["Reporting-MTA"] == "x-mesh; aa@mesh"
    assert blocks[0]["Arrival-Date"]
    rcpt = blocks[1]
    assert rcpt["Final-Recipient"] == "rfc822; bb@mesh"
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "5.7.1"
    assert rcpt["Remote-MTA"] == "x-mesh; 200::1"
    assert "550 5.7.1" in rcpt["Diagnostic-Code"]
    # The original header comes back, the body does not.
    tail = raw.split(b"text/rfc822-headers", 1)[1]
    assert b"Subject: lunch?" in tail and b"Message-ID: <m1@x>" in tail
    assert b"secret body" not in raw


def test_expiry_dsn_and_line_breaks_in_diagnostics() -> None:
    raw = build_dsn(
        reporting_node="aa@mesh",
        original=ORIGINAL,
        bounces=[Bounce("bb@mesh", "4.4.7", "gave up\r\nInjected: header", None, None)],
        arrival=10,
    )
    msg = _parse(raw)
    rcpt = msg.get_payload()[1].get_payload()[1]
    assert rcpt["Status"] == "4.4.7"
    assert rcpt["Injected"] is None  # a CRLF in a reason cannot forge a field
    assert "time allowed" in msg.get_payload()[0].get_content()


def test_status_from_reply() -> None:
    assert status_from_reply("RCPT TO: 550 5.1.1 no such user") == "5.1.1"
    assert status_from_reply("end of DATA: 554 rejected") == "5.0.0"
    assert status_from_reply("cannot connect: refused") == "4.4.1"
    assert status_from_reply("anything", expired=True) == "4.4.7"
