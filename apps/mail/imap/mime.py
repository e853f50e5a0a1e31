"""A raw-bytes MIME tree for IMAP: exact section bytes, ENVELOPE and BODYSTRUCTURE.

IMAP needs the *octets* of every part (RFC 3501 section 6.4.5), so parts are sliced from
the raw message rather than re-serialised by :mod:`email`. The standard library is only
used to read header fields and Content-Type parameters.
"""

from __future__ import annotations

import email.utils
import re
import urllib.parse
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

from .wire import imap_list, istring, nstring

__all__ = [
    "MimePart",
    "bodystructure",
    "envelope",
    "header_fields",
    "parse_message",
    "section_bytes",
    "split_header",
]

MAX_DEPTH = 20  # nesting bound: hostile messages must not blow the stack
_header_parser = BytesHeaderParser(policy=compat32)


def split_header(raw: bytes) -> tuple[bytes, bytes]:
    """Split at the first empty line; the header keeps the empty line (RFC 3501 HEADER)."""
    if raw.startswith(b"\r\n"):
        return b"\r\n", raw[2:]
    idx = raw.find(b"\r\n\r\n")
    if idx < 0:
        return raw, b""
    return raw[: idx + 4], raw[idx + 4 :]


@dataclass(frozen=True, slots=True)
class MimePart:
    header: bytes
    body: bytes
    fields: Message
    maintype: str
    subtype: str
    children: tuple[MimePart, ...] = ()
    message: MimePart | None = None  # the encapsulated message of message/rfc822

    @property
    def is_multipart(self) -> bool:
        return self.maintype == "multipart"


def parse_message(raw: bytes, default_type: str = "text/plain", depth: int = 0) -> MimePart:
    header, body = split_header(raw)
    fields = _header_parser.parsebytes(header)
    fields.set_default_type(default_type)
    ctype = fields.get_content_type()
    maintype, _, subtype = ctype.partition("/")
    if depth >= MAX_DEPTH:
        return MimePart(header, body, fields, "text", "plain")
    if maintype == "multipart":
        boundary = fields.get_param("boundary")
        if isinstance(boundary, str) and boundary:
            child_default = "message/rfc822" if subtype == "digest" else "text/plain"
            kids = tuple(
                parse_message(chunk, child_default, depth + 1)
                for chunk in _split_multipart(body, boundary.encode("utf-8", "surrogateescape"))
            )
            return MimePart(header, body, fields, maintype, subtype, kids)
        return MimePart(header, body, fields, "text", "plain")
    if ctype == "message/rfc822":
        inner = parse_message(body, "text/plain", depth + 1)
        return MimePart(header, body, fields, maintype, subtype, message=inner)
    return MimePart(header, body, fields, maintype, subtype)


def _split_multipart(body: bytes, boundary: bytes) -> list[bytes]:
    delim = re.compile(rb"(?:^|\r\n)--" + re.escape(boundary) + rb"(--)?[ \t]*(?:\r\n|$)")
    parts: list[bytes] = []
    start: int | None = None
    for m in delim.finditer(body):
        if start is not None:
            parts.append(body[start : m.start()])
        if m.group(1):
            return parts
        start = m.end()
    if start is not None:
        parts.append(body[start:])
    return parts


# --- sections -----------------------------------------------------------------------------


def _child(node: MimePart, number: int) -> MimePart:
    if node.message is not None:
        node = node.message
    if node.children:
        if 1 <= number <= len(node.children):
            return node.children[number - 1]
        raise LookupError(f"no part {number}")
    if number == 1:
        return node
    raise LookupError(f"no part {number}")


def _header_blocks(header: bytes) -> list[tuple[str, bytes]]:
    """Each field with its continuation lines, as (lower-case name, raw bytes)."""
    blocks: list[tuple[str, bytes]] = []
    for line in header.splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and blocks:
            name, value = blocks[-1]
            blocks[-1] = (name, value + line)
            continue
        name = line.split(b":", 1)[0].strip().decode("ascii", "replace").lower()
        blocks.append((name, line))
    return blocks


def header_fields(header: bytes, names: list[str], *, exclude: bool) -> bytes:
    wanted = {n.lower() for n in names}
    kept = [raw for name, raw in _header_blocks(header) if (name in wanted) != exclude]
    return b"".join(kept) + b"\r\n"


def section_bytes(
    root: MimePart, parts: tuple[int, ...], text: str, field_names: tuple[str, ...]
) -> bytes:
    """Bytes of ``BODY[<parts>.<text> (<fields>)]``; raises LookupError for a missing part."""
    node = root
    for number in parts:
        node = _child(node, number)
    if text == "":
        return root.header + root.body if not parts else node.body
    if text == "MIME":
        if not parts:
            raise LookupError("MIME needs a part number")
        return node.header
    if parts:  # HEADER / TEXT of an encapsulated message
        if node.message is None:
            raise LookupError("HEADER/TEXT of a part that is not message/rfc822")
        node = node.message
    if text == "HEADER":
        return node.header
    if text == "TEXT":
        return node.body
    if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        return header_fields(node.header, list(field_names), exclude=text.endswith(".NOT"))
    raise LookupError(f"unknown section text {text}")


# --- ENVELOPE -----------------------------------------------------------------------------


def _raw_all(fields: Message, name: str) -> list[str]:
    """Values as stored (8-bit bytes kept as surrogates), unfolded: no policy rewriting."""
    name = name.lower()
    return [
        re.sub(r"\r?\n(?=[ \t])", "", str(value)).strip()
        for key, value in fields.raw_items()
        if key.lower() == name
    ]


def _raw_value(fields: Message, name: str) -> bytes | None:
    values = _raw_all(fields, name)
    return values[0].encode("utf-8", "surrogateescape") if values else None


def _addresses(fields: Message, name: str) -> bytes:
    values = _raw_all(fields, name)
    if not values:
        return b"NIL"
    out: list[bytes] = []
    for display, addr in email.utils.getaddresses(values):
        if not addr and not display:
            continue
        mailbox, _, host = addr.rpartition("@") if "@" in addr else (addr, "", "")
        enc = "utf-8", "surrogateescape"
        item = [
            nstring(display.encode(*enc) if display else None),
            b"NIL",
            nstring(mailbox.encode(*enc) if mailbox else None),
            nstring(host.encode(*enc) if host else None),
        ]
        out.append(imap_list(item))
    return b"(" + b"".join(out) + b")" if out else b"NIL"


def envelope(fields: Message) -> bytes:
    """The ENVELOPE structure (RFC 3501 section 7.4.2) of a message's header fields."""
    from_ = _addresses(fields, "from")
    sender = _addresses(fields, "sender")
    reply_to = _addresses(fields, "reply-to")
    items = [
        nstring(_raw_value(fields, "date")),
        nstring(_raw_value(fields, "subject")),
        from_,
        sender if sender != b"NIL" else from_,
        reply_to if reply_to != b"NIL" else from_,
        _addresses(fields, "to"),
        _addresses(fields, "cc"),
        _addresses(fields, "bcc"),
        nstring(_raw_value(fields, "in-reply-to")),
        nstring(_raw_value(fields, "message-id")),
    ]
    return imap_list(items)


# --- BODYSTRUCTURE ------------------------------------------------------------------------


def _params(fields: Message, header: str = "content-type") -> bytes:
    params = fields.get_params(header=header) or []
    items: list[bytes] = []
    for key, value in params[1:]:
        if isinstance(value, tuple):  # RFC 2231: passed on encoded, as "KEY*", 7-bit clean
            charset, language, text = value
            key = key + "*"
            octets = urllib.parse.quote(text, safe="", encoding="latin-1", errors="replace")
            text = f"{charset or ''}'{language or ''}'{octets}"
        else:
            text = value
        items.append(istring(key.upper().encode("utf-8", "surrogateescape")))
        items.append(istring(text.encode("utf-8", "surrogateescape")))
    return imap_list(items) if items else b"NIL"


def _disposition(fields: Message) -> bytes:
    raw = fields.get("content-disposition")
    if raw is None:
        return b"NIL"
    kind = str(raw).split(";", 1)[0].strip().upper().encode("utf-8", "surrogateescape")
    return imap_list([istring(kind), _params(fields, "content-disposition")])


def _line_count(body: bytes) -> int:
    return body.count(b"\n") + (1 if body and not body.endswith(b"\n") else 0)


def bodystructure(part: MimePart, *, extended: bool = True) -> bytes:
    """BODYSTRUCTURE (``extended``) or BODY of a parsed part (RFC 3501 section 7.4.2)."""
    if part.is_multipart and part.children:
        items = b"".join(bodystructure(c, extended=extended) for c in part.children)
        out = [items, istring(part.subtype.upper().encode("utf-8", "surrogateescape"))]
        if extended:
            out += [_params(part.fields), _disposition(part.fields), b"NIL", b"NIL"]
        return b"(" + b" ".join(out) + b")"
    fields = part.fields
    params = _params(fields)
    if part.maintype == "text" and params == b"NIL":
        params = b'("CHARSET" "us-ascii")'
    encoding = _raw_value(fields, "content-transfer-encoding") or b"7BIT"
    out = [
        istring(part.maintype.upper().encode("utf-8", "surrogateescape")),
        istring(part.subtype.upper().encode("utf-8", "surrogateescape")),
        params,
        nstring(_raw_value(fields, "content-id")),
        nstring(_raw_value(fields, "content-description")),
        istring(encoding.upper()),
        str(len(part.body)).encode(),
    ]
    if part.message is not None:
        out += [
            envelope(part.message.fields),
            bodystructure(part.message, extended=extended),
            str(_line_count(part.body)).encode(),
        ]
    elif part.maintype == "text":
        out.append(str(_line_count(part.body)).encode())
    if extended:
        md5 = nstring(_raw_value(fields, "content-md5"))
        language = nstring(_raw_value(fields, "content-language"))
        location = nstring(_raw_value(fields, "content-location"))
        out += [md5, _disposition(fields), language, location]
    return imap_list(out)
