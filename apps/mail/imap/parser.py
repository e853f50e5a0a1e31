"""Sans-IO IMAP4rev1 command parser (RFC 3501 section 9, RFC 7888 LITERAL+).

Feed bytes with :meth:`CommandParser.receive_data`, pull events with
:meth:`CommandParser.next_event` until it returns ``None`` (more data needed):

* :class:`Command` - a complete command: tag, upper-case name, argument values;
* :class:`NeedContinuation` - a synchronizing literal ``{n}`` was announced; the server
  must send a ``+`` continuation before the client sends the literal;
* :class:`RawLine` - a line read in raw mode (IDLE's ``DONE``, an AUTHENTICATE response);
* :class:`ProtocolError` - the client broke the grammar or a limit. ``fatal`` errors
  (line or literal beyond the limits where the framing can no longer be trusted) leave the
  parser dead: the server says BYE and closes; others are answered with a tagged BAD.

Argument values are ``str`` for atoms (including ``NIL``, flags, sequence sets and fetch
items such as ``BODY.PEEK[HEADER.FIELDS (From)]<0.100>``), ``bytes`` for quoted strings and
literals, and ``list`` for parenthesised lists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

__all__ = [
    "MAX_LINE",
    "MAX_LITERAL",
    "Command",
    "CommandParser",
    "Event",
    "NeedContinuation",
    "ProtocolError",
    "RawLine",
    "Value",
]

# RFC 7162 section 4 asks servers to accept command lines of at least 8192 octets; UID sets
# from synchronising clients can be long, so allow more but stay bounded.
MAX_LINE = 64 * 1024
MAX_LITERAL = 64 * 1024 * 1024  # the largest message APPEND accepts
MAX_DEPTH = 32  # nesting of parenthesised lists

Value = Union[str, bytes, list["Value"]]  # noqa: UP007 - recursive alias needs Union


@dataclass(frozen=True, slots=True)
class Command:
    tag: str
    name: str
    args: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class NeedContinuation:
    size: int


@dataclass(frozen=True, slots=True)
class RawLine:
    line: bytes


@dataclass(frozen=True, slots=True)
class ProtocolError:
    tag: str | None
    message: str
    fatal: bool


Event = Command | NeedContinuation | RawLine | ProtocolError

_LITERAL_END = re.compile(rb"\{(\d{1,19})(\+?)\}$")
_TAG = re.compile(r"^[!#$&',\-./0-9:;<=>?@A-Z\[^_`a-z|}~]+$")


class _Literal(bytes):
    """A literal segment (kept apart from line text while a command is assembled)."""


class _Paren(str):
    """``(`` or ``)`` as a token."""


class CommandParser:
    def __init__(self, *, max_line: int = MAX_LINE, max_literal: int = MAX_LITERAL) -> None:
        self.max_line = max_line
        self.max_literal = max_literal
        self.raw_line_mode = False
        self._buf = bytearray()
        self._segments: list[bytes] = []
        self._literal_needed: int | None = None
        self._command_size = 0
        self._dead = False

    @property
    def dead(self) -> bool:
        return self._dead

    def receive_data(self, data: bytes) -> None:
        if not self._dead:
            self._buf += data

    def next_event(self) -> Event | None:
        while not self._dead:
            if self._literal_needed is not None:
                if len(self._buf) < self._literal_needed:
                    return None
                size = self._literal_needed
                self._segments.append(_Literal(self._buf[:size]))
                del self._buf[:size]
                self._literal_needed = None
                continue
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > self.max_line:
                    return self._fatal(f"command line longer than {self.max_line} octets")
                return None
            if end > self.max_line:
                return self._fatal(f"command line longer than {self.max_line} octets")
            line = bytes(self._buf[:end]).removesuffix(b"\r")
            del self._buf[: end + 1]
            event = self._take_line(line)
            if event is not None:
                return event
        return None

    def _fatal(self, message: str) -> ProtocolError:
        self._dead = True
        self._buf.clear()
        self._segments.clear()
        return ProtocolError(None, message, fatal=True)

    def _take_line(self, line: bytes) -> Event | None:
        if self.raw_line_mode and not self._segments:
            return RawLine(line)
        self._command_size += len(line)
        match = _LITERAL_END.search(line)
        if match is None:
            self._segments.append(line)
            segments, self._segments = self._segments, []
            self._command_size = 0
            return parse_command(segments)
        size, non_sync = int(match.group(1)), bool(match.group(2))
        self._command_size += size
        first = self._segments[0] if self._segments else line
        # Only APPEND carries messages; any other literal (user name, search string...)
        # is held to the line limit.
        limit = self.max_literal if _is_append(first) else self.max_line
        if size > limit or self._command_size > self.max_literal + self.max_line:
            if non_sync:  # the client sends the bytes anyway: framing is lost
                return self._fatal(f"literal of {size} octets exceeds {limit}")
            tag = _first_tag(first)
            self._segments = []
            self._command_size = 0
            return ProtocolError(tag, f"literal of {size} octets exceeds {limit}", False)
        self._segments.append(line[: match.start()])
        self._literal_needed = size
        return None if non_sync else NeedContinuation(size)


def _is_append(line: bytes) -> bool:
    words = line.split(b" ", 2)
    return len(words) > 1 and words[1].upper() == b"APPEND"


def _first_tag(line: bytes) -> str | None:
    tag = line.split(b" ", 1)[0].decode("ascii", "replace")
    return tag if _TAG.match(tag) else None


# --- tokenizer and grammar -----------------------------------------------------------------

_ATOM_STOP = frozenset(b' ()\r\n"{')


class _SyntaxError(ValueError):
    pass


def _tokenize(segments: list[bytes]) -> list[str | bytes]:
    tokens: list[str | bytes] = []
    for seg in segments:
        if isinstance(seg, _Literal):
            tokens.append(bytes(seg))
            continue
        i, n = 0, len(seg)
        while i < n:
            c = seg[i]
            if c == 0x20:
                i += 1
            elif c in (0x28, 0x29):
                tokens.append(_Paren(chr(c)))
                i += 1
            elif c == 0x22:
                i = _quoted(seg, i + 1, tokens)
            else:
                i = _atom(seg, i, tokens)
    return tokens


def _quoted(seg: bytes, i: int, tokens: list[str | bytes]) -> int:
    out = bytearray()
    n = len(seg)
    while i < n:
        c = seg[i]
        if c == 0x5C and i + 1 < n:  # backslash escape
            out.append(seg[i + 1])
            i += 2
        elif c == 0x22:
            tokens.append(bytes(out))
            return i + 1
        else:
            out.append(c)
            i += 1
    raise _SyntaxError("unterminated quoted string")


def _atom(seg: bytes, i: int, tokens: list[str | bytes]) -> int:
    start, n, depth = i, len(seg), 0
    while i < n:
        c = seg[i]
        if c == 0x5B:  # [ ... ] may hold spaces and parentheses (fetch sections)
            depth += 1
        elif c == 0x5D:
            depth = max(0, depth - 1)
        elif depth == 0 and c in _ATOM_STOP:
            break
        i += 1
    if i == start:
        raise _SyntaxError(f"unexpected character {chr(seg[i])!r}")
    if depth:
        raise _SyntaxError("unterminated [ in atom")
    tokens.append(seg[start:i].decode("utf-8", "replace"))
    return i


def _nest(tokens: list[str | bytes]) -> list[Value]:
    stack: list[list[Value]] = [[]]
    for tok in tokens:
        if isinstance(tok, _Paren):
            if tok == "(":
                if len(stack) > MAX_DEPTH:
                    raise _SyntaxError("lists nested too deeply")
                inner: list[Value] = []
                stack[-1].append(inner)
                stack.append(inner)
            else:
                if len(stack) == 1:
                    raise _SyntaxError("unbalanced )")
                stack.pop()
        else:
            stack[-1].append(tok)
    if len(stack) != 1:
        raise _SyntaxError("unbalanced (")
    return stack[0]


def parse_command(segments: list[bytes]) -> Command | ProtocolError:
    tag = _first_tag(segments[0]) if segments else None
    try:
        values = _nest(_tokenize(segments))
    except _SyntaxError as exc:
        return ProtocolError(tag, str(exc), fatal=False)
    if not values or not isinstance(values[0], str) or not _TAG.match(values[0]):
        return ProtocolError(None, "missing or invalid tag", fatal=False)
    if len(values) < 2 or not isinstance(values[1], str):
        return ProtocolError(values[0], "missing command name", fatal=False)
    name = values[1].upper()
    rest = values[2:]
    if name == "UID":
        if not rest or not isinstance(rest[0], str):
            return ProtocolError(values[0], "UID needs a command", fatal=False)
        name = "UID " + rest[0].upper()
        rest = rest[1:]
    return Command(values[0], name, tuple(rest))
