"""Mailbox names on the wire: modified UTF-7 (RFC 3501 section 5.1.3) and UTF-8 (RFC 6855).

The store keeps names as Unicode text. Before a session enables ``UTF8=ACCEPT`` the wire
carries names in modified UTF-7: printable US-ASCII stands for itself (``&`` as ``&-``),
every other run of characters is ``&`` + modified BASE64 of its UTF-16BE + ``-``. After
``ENABLE UTF8=ACCEPT`` names travel as UTF-8 and ``&`` is an ordinary character.

:func:`decode_mailbox` turns what a client sent into the name, refusing what cannot be one
(``ValueError`` with a message a person can act on); :func:`encode_mailbox` is its inverse.
Only the canonical modified UTF-7 form is accepted (decoding then encoding gives back the
same text), so one name has exactly one spelling on the wire.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata

__all__ = [
    "MAX_NAME_LENGTH",
    "decode_mailbox",
    "decode_mutf7",
    "encode_mailbox",
    "encode_mutf7",
    "render_mailbox",
]

MAX_NAME_LENGTH = 1024  # characters of a decoded name: generous, but bounded
DELIMITER = "/"
_ATOM_SAFE = re.compile(rb"^[!#$&'+,\-./0-9:;<=>?@A-Z^_`a-z|}~]+$")
_NOT_QUOTABLE = re.compile(rb"[\x00\r\n]")
_B64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,")


def _printable(ch: str) -> bool:
    return "\x20" <= ch <= "\x7e"


def encode_mutf7(name: str) -> str:
    """``name`` in modified UTF-7 (RFC 3501 section 5.1.3)."""
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            data = "".join(run).encode("utf-16-be", "surrogatepass")
            b64 = base64.b64encode(data).decode("ascii").rstrip("=").replace("/", ",")
            out.append(f"&{b64}-")
            run.clear()

    for ch in name:
        if _printable(ch):
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    flush()
    return "".join(out)


def decode_mutf7(text: str) -> str:
    """The name a modified UTF-7 string spells; ``ValueError`` if it is not canonical
    modified UTF-7 (unterminated ``&``, bad BASE64, ASCII smuggled in BASE64...)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if not _printable(ch):
            raise ValueError(
                f"byte {ord(ch):#04x} is not allowed raw in a mailbox name: names other "
                "than printable US-ASCII go in modified UTF-7 (RFC 3501 section 5.1.3) "
                "unless the client enabled UTF8=ACCEPT"
            )
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = text.find("-", i + 1)
        if end < 0:
            raise ValueError(
                f"'&' at position {i} starts modified UTF-7 that never ends with '-' "
                "(write a literal '&' as '&-')"
            )
        chunk = text[i + 1 : end]
        out.append("&" if not chunk else _decode_chunk(chunk))
        i = end + 1
    name = "".join(out)
    if encode_mutf7(name) != text:
        raise ValueError(
            f"{text!r} is not in canonical modified UTF-7 (it would be {encode_mutf7(name)!r})"
        )
    return name


def _decode_chunk(chunk: str) -> str:
    raw = chunk.encode("ascii")
    if not set(raw) <= _B64_ALPHABET:
        raise ValueError(f"'&{chunk}-' holds characters outside modified BASE64")
    try:
        data = base64.b64decode(raw.replace(b",", b"/") + b"=" * (-len(raw) % 4), validate=True)
    except binascii.Error:
        raise ValueError(f"'&{chunk}-' is not valid modified BASE64") from None
    if len(data) % 2:
        raise ValueError(f"'&{chunk}-' does not decode to whole UTF-16 code units")
    try:
        decoded = data.decode("utf-16-be")
    except UnicodeDecodeError:
        raise ValueError(f"'&{chunk}-' holds an unpaired UTF-16 surrogate") from None
    if any(_printable(c) for c in decoded):
        raise ValueError(f"'&{chunk}-' encodes printable US-ASCII, which must stand for itself")
    return decoded


def _check_name(name: str, *, creating: bool) -> str:
    if not name:
        raise ValueError("a mailbox name must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"a mailbox name may have at most {MAX_NAME_LENGTH} characters")
    for ch in name:
        category = unicodedata.category(ch)
        if category in ("Cc", "Cs") or ch == "\ufffd":
            what = "invalid UTF-8" if ch == "\ufffd" else f"the control character U+{ord(ch):04X}"
            raise ValueError(f"a mailbox name must not contain {what}")
    if creating:
        if "*" in name or "%" in name:
            raise ValueError("'*' and '%' are LIST wildcards and cannot be part of a name")
        if name.startswith(DELIMITER) or DELIMITER * 2 in name.rstrip(DELIMITER):
            raise ValueError(f"{name!r} has an empty level: '/' separates non-empty names")
        if any(level in (".", "..") for level in name.rstrip(DELIMITER).split(DELIMITER)):
            raise ValueError(f"{name!r} has a '.' or '..' level, which clients read as a path")
    return name


def decode_mailbox(
    value: str | bytes, *, utf8: bool, creating: bool = False, pattern: bool = False
) -> str:
    """The mailbox name a client sent as an atom (``str``) or a string (``bytes``).

    ``utf8``: the session enabled UTF8=ACCEPT (names are UTF-8, ``&`` is literal);
    otherwise they are modified UTF-7 and raw 8-bit is refused. ``creating``: the name is
    about to be made (CREATE, RENAME's target), so wildcards and empty levels are refused
    too. ``pattern``: a LIST reference or pattern (may be empty; only decoded).
    Raises ``ValueError`` saying what is wrong.
    """
    if isinstance(value, bytes):
        if utf8:
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError("the mailbox name is not valid UTF-8") from None
        elif any(b >= 0x80 for b in value):
            raise ValueError(
                "raw 8-bit bytes in a mailbox name: send it in modified UTF-7 "
                "(RFC 3501 section 5.1.3) or ENABLE UTF8=ACCEPT first"
            )
        else:
            text = value.decode("ascii")
    else:
        text = value
        if not utf8 and any(ord(c) >= 0x80 for c in text):
            raise ValueError(
                "raw 8-bit bytes in a mailbox name: send it in modified UTF-7 "
                "(RFC 3501 section 5.1.3) or ENABLE UTF8=ACCEPT first"
            )
    name = text if utf8 else decode_mutf7(text)
    if pattern:
        return name
    return _check_name(name, creating=creating)


def encode_mailbox(name: str, *, utf8: bool) -> str:
    """How ``name`` is written on the wire for a session (before quoting)."""
    return name if utf8 else encode_mutf7(name)


def render_mailbox(name: str, *, utf8: bool) -> bytes:
    """``name`` as a response's ``mailbox``: an atom when safe, else a quoted string
    (UTF-8 inside once UTF8=ACCEPT is on, RFC 6855 section 3), else a literal."""
    raw = encode_mailbox(name, utf8=utf8).encode("utf-8")
    if _ATOM_SAFE.match(raw) and raw.upper() != b"NIL":
        return raw
    if len(raw) <= MAX_NAME_LENGTH * 4 and not _NOT_QUOTABLE.search(raw):
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(raw) + raw
