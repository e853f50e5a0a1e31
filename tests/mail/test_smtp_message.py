"""Byte-level message helpers: Bcc removal, submission headers, dedup keys."""

from __future__ import annotations

from apps.mail.message import (
    dedup_key,
    ensure_submission_headers,
    from_addresses,
    header_fields,
    split_header,
    strip_bcc,
)


def test_strip_bcc_keeps_everything_else_byte_exact() -> None:
    raw = (
        b"From: a@mesh\r\nBcc: secret@mesh,\r\n  other@mesh\r\nTo: b@mesh\r\n"
        b"RESENT-BCC: x@mesh\r\nSubject: folded\r\n subject\r\n\r\nBcc: in the body stays\r\n"
    )
    assert strip_bcc(raw) == (
        b"From: a@mesh\r\nTo: b@mesh\r\nSubject: folded\r\n subject\r\n\r\n"
        b"Bcc: in the body stays\r\n"
    )
    plain = b"From: a@mesh\r\nCc: c@mesh\r\n\r\nbody\r\n"
    assert strip_bcc(plain) == plain


def test_submission_headers_added_only_when_missing() -> None:
    raw, mid = ensure_submission_headers(b"From: a@mesh\r\n\r\nx\r\n", domain="k.mesh")
    assert mid.endswith("@k.mesh>") and raw.startswith(b"Message-ID: " + mid.encode())
    assert b"\r\nDate: " in raw
    again, mid2 = ensure_submission_headers(raw, domain="k.mesh")
    assert again == raw and mid2 == mid


def test_dedup_key_and_addresses() -> None:
    raw = b'From: "A" <a@mesh>, b@mesh\r\nMessage-ID:\r\n <id@x>\r\n\r\nx'
    fields = header_fields(raw)
    assert from_addresses(fields) == ["a@mesh", "b@mesh"]
    assert dedup_key(fields, raw, "ab") == "mesh|ab|<id@x>"
    no_id = b"From: a@mesh\r\n\r\nx"
    assert dedup_key(header_fields(no_id), no_id, "ab").startswith("mesh|ab|sha256:")
    assert split_header(b"\r\nbody") == (b"\r\n", b"body")
    assert split_header(b"A: b\r\n") == (b"A: b\r\n", b"")
