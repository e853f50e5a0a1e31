"""IMAP wire encoding helpers (RFC 3501 section 4): strings, flags, dates, sequence sets.

Pure functions, no I/O. Everything returns ``bytes`` ready to be placed in a response.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone

__all__ = [
    "MONTHS",
    "format_internal_date",
    "imap_list",
    "istring",
    "nstring",
    "parse_date",
    "parse_date_time",
    "quote_astring",
    "render_flags",
    "uid_set_text",
]

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_INDEX = {m.lower(): i + 1 for i, m in enumerate(MONTHS)}
# A quoted string may hold any 7-bit TEXT-CHAR except CR and LF (RFC 3501 section 9).
_QUOTABLE = re.compile(rb"^[\x01-\x09\x0b\x0c\x0e-\x7f]*$")
_ATOM_SAFE = re.compile(rb"^[!#$&'+,\-./0-9:;<=>?@A-Z^_`a-z|}~]+$")
# Long values go as literals: they are cheaper for clients than escaped quoted strings.
_MAX_QUOTED = 1024


def istring(value: bytes) -> bytes:
    """A ``string``: quoted when possible, else a synchronizing literal."""
    if len(value) <= _MAX_QUOTED and _QUOTABLE.match(value):
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(value) + value


def nstring(value: bytes | None) -> bytes:
    """An ``nstring``: NIL for an absent value."""
    return b"NIL" if value is None else istring(value)


def quote_astring(value: str) -> bytes:
    """An ``astring`` (mailbox names): an atom when safe, else a string."""
    raw = value.encode("utf-8")
    if _ATOM_SAFE.match(raw) and raw.upper() != b"NIL":
        return raw
    return istring(raw)


def imap_list(items: Iterable[bytes]) -> bytes:
    return b"(" + b" ".join(items) + b")"


def render_flags(flags: Iterable[str]) -> bytes:
    ordered = sorted(flags, key=lambda f: (not f.startswith("\\"), f))  # system flags first
    return b"(" + " ".join(ordered).encode("ascii", "replace") + b")"


def format_internal_date(when: datetime) -> bytes:
    """``date-time`` as in FETCH INTERNALDATE: ``"17-Jul-1996 02:44:25 -0700"``."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    offset = when.utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    text = (
        f'"{when.day:2d}-{MONTHS[when.month - 1]}-{when.year:04d} '
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} "
        f'{sign}{minutes // 60:02d}{minutes % 60:02d}"'
    )
    return text.encode("ascii")


_DATE_TIME = re.compile(
    r"^\s?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})$"
)
_DATE = re.compile(r"^(\d{1,2})-([A-Za-z]{3})-(\d{4})$")


def parse_date_time(text: str) -> datetime:
    """Parse an APPEND ``date-time``; raises ValueError saying what is wrong."""
    m = _DATE_TIME.match(text)
    if not m or m.group(2).lower() not in _MONTH_INDEX:
        raise ValueError(f"bad date-time {text!r}: expected like 17-Jul-1996 02:44:25 -0700")
    day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
    offset = timedelta(hours=int(zh), minutes=int(zm)) * (1 if sign == "+" else -1)
    return datetime(
        int(year), _MONTH_INDEX[mon.lower()], int(day), int(hh), int(mm), int(ss),
        tzinfo=timezone(offset),
    )  # fmt: skip


def parse_date(text: str) -> tuple[int, int, int]:
    """Parse a SEARCH ``date`` (``1-Feb-1994``) into (year, month, day)."""
    m = _DATE.match(text)
    if not m or m.group(2).lower() not in _MONTH_INDEX:
        raise ValueError(f"bad date {text!r}: expected like 1-Feb-1994")
    datetime(int(m.group(3)), _MONTH_INDEX[m.group(2).lower()], int(m.group(1)))  # validates
    return int(m.group(3)), _MONTH_INDEX[m.group(2).lower()], int(m.group(1))


def uid_set_text(uids: Iterable[int]) -> str:
    """Compress UIDs into a sequence-set string: ``1:3,7,9:10`` (input order kept in runs)."""
    out: list[str] = []
    start = prev = None
    for uid in uids:
        if start is None:
            start = prev = uid
            continue
        assert prev is not None
        if uid == prev + 1:
            prev = uid
            continue
        out.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = uid
    if start is not None:
        out.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(out)
