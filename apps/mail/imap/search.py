"""SEARCH criteria (RFC 3501 section 6.4.4): parse into a predicate tree, evaluate per message.

Criteria that only need cached data (flags, dates, sizes, UIDs) never load message bytes;
header criteria load only header blocks, BODY/TEXT load the whole message.
"""

from __future__ import annotations

import contextlib
import email.header
import email.policy
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email import message_from_bytes
from email.message import EmailMessage

from ..store import MessageMeta
from .mime import split_header
from .parser import Value
from .seqset import SequenceSet
from .wire import parse_date

__all__ = ["Criteria", "SearchContext", "parse_search"]

log = logging.getLogger(__name__)

NEED_NOTHING, NEED_HEADER, NEED_BODY = 0, 1, 2
SUPPORTED_CHARSETS = ("UTF-8", "US-ASCII")


@dataclass(slots=True)
class SearchContext:
    """What one message offers to the predicates; bytes are filled in by the session."""

    seq: int
    meta: MessageMeta
    flags: frozenset[str]
    recent: bool
    max_seq: int
    max_uid: int
    raw: bytes | None = None
    _headers: dict[str, list[str]] | None = field(default=None)
    _decoded: dict[str, list[str]] = field(default_factory=dict)
    _text: str | None = field(default=None)

    def header_values(self, name: str) -> list[str]:
        """Decoded, case-folded values of one header field (decoded on first use)."""
        if self._headers is None:
            self._headers = _raw_headers(split_header(self.raw or b"")[0])
        key = name.lower()
        decoded = self._decoded.get(key)
        if decoded is None:
            decoded = [_decode_value(v) for v in self._headers.get(key, [])]
            self._decoded[key] = decoded
        return decoded

    def all_headers_text(self) -> str:
        if self._headers is None:
            self.header_values("")
        assert self._headers is not None
        return "\n".join(v for key in self._headers for v in self.header_values(key))

    def body_text(self) -> str:
        if self._text is None:
            self._text = _decode_body(self.raw or b"")
        return self._text


Predicate = Callable[[SearchContext], bool]


@dataclass(frozen=True, slots=True)
class Criteria:
    predicate: Predicate
    needs: int  # NEED_NOTHING / NEED_HEADER / NEED_BODY
    modseq: bool = False  # a MODSEQ key was used: the response carries (MODSEQ n)


def _raw_headers(header: bytes) -> dict[str, list[str]]:
    """Unfolded raw values by lower-case field name."""
    out: dict[str, list[str]] = {}
    text = header.decode("utf-8", "surrogateescape")
    fields: list[str] = []
    for line in text.splitlines():
        if line[:1] in (" ", "\t") and fields:
            fields[-1] += " " + line.strip()
        elif line:
            fields.append(line)
    for line in fields:
        name, _, value = line.partition(":")
        out.setdefault(name.strip().lower(), []).append(value.strip())
    return out


def _decode_value(value: str) -> str:
    """RFC 2047 encoded words decoded, then case-folded for matching."""
    if "=?" not in value:
        return value.casefold()
    try:
        decoded = str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        decoded = value
    return decoded.casefold()


def _decode_body(raw: bytes) -> str:
    chunks: list[str] = []
    try:
        msg = message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        for part in msg.walk():
            if part.get_content_maintype() == "text":
                with contextlib.suppress(LookupError, ValueError, UnicodeError, AssertionError):
                    chunks.append(str(part.get_content()))
    except Exception:  # a broken message must still be searchable as raw text
        log.debug("falling back to raw text for SEARCH", exc_info=True)
    chunks.append(split_header(raw)[1].decode("utf-8", "replace"))
    return "\n".join(chunks).casefold()


class _Tokens:
    def __init__(self, values: list[Value], charset: str) -> None:
        self._values = values
        self._pos = 0
        self.charset = charset

    def __iter__(self) -> Iterator[Value]:
        return self

    def __next__(self) -> Value:
        if self._pos >= len(self._values):
            raise StopIteration
        self._pos += 1
        return self._values[self._pos - 1]

    def back(self) -> None:
        self._pos -= 1

    def more(self) -> bool:
        return self._pos < len(self._values)

    def take(self, what: str) -> Value:
        if not self.more():
            raise ValueError(f"SEARCH key needs {what}")
        return next(self)

    def string(self) -> str:
        value = self.take("a string")
        if isinstance(value, list):
            raise ValueError("expected a string, got a list")
        if isinstance(value, bytes):
            return value.decode(self.charset, "replace").casefold()
        return value.casefold()

    def atom(self, what: str) -> str:
        value = self.take(what)
        if not isinstance(value, str):
            raise ValueError(f"expected {what}")
        return value

    def day(self) -> date:
        y, m, d = parse_date(self.atom("a date").strip('"'))
        return date(y, m, d)

    def number(self) -> int:
        text = self.atom("a number")
        if not text.isdigit():
            raise ValueError(f"expected a number, got {text!r}")
        return int(text)


def _flag(name: str, want: bool = True) -> Criteria:
    return Criteria(lambda c: (name in c.flags) == want, NEED_NOTHING)


def _header(name: str, needle: str) -> Criteria:
    if not needle:
        return Criteria(lambda c: bool(c.header_values(name)), NEED_HEADER)
    return Criteria(lambda c: any(needle in v for v in c.header_values(name)), NEED_HEADER)


def _internal_day(c: SearchContext) -> date:
    return c.meta.internal_date.date()


def _sent_day(c: SearchContext) -> date:
    if c.meta.sent_date is None:
        return _internal_day(c)
    return datetime.fromtimestamp(c.meta.sent_date, UTC).date()


def _date_cmp(getter: Callable[[SearchContext], date], op: str, day: date) -> Criteria:
    if op == "<":
        return Criteria(lambda c: getter(c) < day, NEED_NOTHING)
    if op == ">=":
        return Criteria(lambda c: getter(c) >= day, NEED_NOTHING)
    return Criteria(lambda c: getter(c) == day, NEED_NOTHING)


_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True),
    "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True),
    "SEEN": ("\\Seen", True),
    "UNANSWERED": ("\\Answered", False),
    "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
}
_ADDRESS_KEYS = ("FROM", "TO", "CC", "BCC", "SUBJECT")
_DATE_KEYS = {
    "BEFORE": (_internal_day, "<"),
    "ON": (_internal_day, "="),
    "SINCE": (_internal_day, ">="),
    "SENTBEFORE": (_sent_day, "<"),
    "SENTON": (_sent_day, "="),
    "SENTSINCE": (_sent_day, ">="),
}


def _all_of(parts: list[Criteria]) -> Criteria:
    preds = [p.predicate for p in parts]
    needs = max((p.needs for p in parts), default=NEED_NOTHING)
    return Criteria(lambda c: all(p(c) for p in preds), needs, any(p.modseq for p in parts))


def _key(tokens: _Tokens, depth: int) -> Criteria:
    if depth > 64:
        raise ValueError("SEARCH criteria nested too deeply")
    value = tokens.take("a search key")
    if isinstance(value, list):
        sub = _Tokens(value, tokens.charset)
        return _all_of([_key(sub, depth + 1) for _ in iter(sub.more, False)])
    if isinstance(value, bytes):
        raise ValueError("unexpected string in SEARCH criteria")
    key = value.upper()
    if key == "ALL":
        return Criteria(lambda c: True, NEED_NOTHING)
    if key in _FLAG_KEYS:
        return _flag(*_FLAG_KEYS[key])
    if key in _ADDRESS_KEYS:
        return _header(key.lower(), tokens.string())
    if key in _DATE_KEYS:
        getter, op = _DATE_KEYS[key]
        return _date_cmp(getter, op, tokens.day())
    return _other_key(key, value, tokens, depth)


def _other_key(key: str, value: str, tokens: _Tokens, depth: int) -> Criteria:
    if key == "HEADER":
        name = tokens.string()
        return _header(name, tokens.string())
    if key in ("KEYWORD", "UNKEYWORD"):
        flag = tokens.atom("a keyword")
        return Criteria(lambda c: (flag in c.flags) == (key == "KEYWORD"), NEED_NOTHING)
    if key in ("LARGER", "SMALLER"):
        size = tokens.number()
        if key == "LARGER":
            return Criteria(lambda c: c.meta.size > size, NEED_NOTHING)
        return Criteria(lambda c: c.meta.size < size, NEED_NOTHING)
    if key == "BODY":
        needle = tokens.string()
        return Criteria(lambda c: needle in c.body_text(), NEED_BODY)
    if key == "TEXT":
        needle = tokens.string()
        return Criteria(
            lambda c: needle in c.all_headers_text() or needle in c.body_text(), NEED_BODY
        )
    if key == "NEW":
        return Criteria(lambda c: c.recent and "\\Seen" not in c.flags, NEED_NOTHING)
    if key == "OLD":
        return Criteria(lambda c: not c.recent, NEED_NOTHING)
    if key == "RECENT":
        return Criteria(lambda c: c.recent, NEED_NOTHING)
    if key == "NOT":
        inner = _key(tokens, depth + 1)
        return Criteria(lambda c: not inner.predicate(c), inner.needs, inner.modseq)
    if key == "OR":
        left, right = _key(tokens, depth + 1), _key(tokens, depth + 1)
        return Criteria(
            lambda c: left.predicate(c) or right.predicate(c),
            max(left.needs, right.needs),
            left.modseq or right.modseq,
        )
    if key == "MODSEQ":  # RFC 7162 section 3.1.5: MODSEQ [entry-name entry-type] n
        if isinstance(tokens.take("a mod-sequence"), bytes):
            tokens.atom("an entry type")  # per-flag modseqs are not kept: the message's counts
        else:
            tokens.back()
        least = tokens.number()
        return Criteria(lambda c: c.meta.modseq >= least, NEED_NOTHING, True)
    if key == "UID":
        uids = SequenceSet.parse(tokens.atom("a UID set"))
        return Criteria(lambda c: uids.contains(c.meta.uid, c.max_uid), NEED_NOTHING)
    try:
        seqs = SequenceSet.parse(value)
    except ValueError:
        raise ValueError(f"unknown SEARCH key {value!r}") from None
    return Criteria(lambda c: seqs.contains(c.seq, c.max_seq), NEED_NOTHING)


def parse_search(args: list[Value]) -> Criteria:
    """Parse SEARCH arguments (``[CHARSET x] key...``); ValueError / LookupError on errors.

    LookupError means an unsupported charset (answered with ``NO [BADCHARSET]``).
    """
    charset = "utf-8"
    if len(args) >= 2 and isinstance(args[0], str) and args[0].upper() == "CHARSET":
        name = args[1].decode("ascii", "replace") if isinstance(args[1], bytes) else str(args[1])
        if name.upper() not in SUPPORTED_CHARSETS:
            raise LookupError(name)
        charset = "utf-8" if name.upper() == "UTF-8" else "ascii"
        args = args[2:]
    tokens = _Tokens(list(args), charset)
    if not tokens.more():
        raise ValueError("SEARCH needs at least one key")
    return _all_of([_key(tokens, 0) for _ in iter(tokens.more, False)])
