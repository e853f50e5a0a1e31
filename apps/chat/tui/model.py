"""The chat UI's state without I/O or widgets: messages, the paged message window,
conversation summaries, input history, and the `/` command table.

Everything here is plain data fed by control API replies and events, so it is tested
synchronously; the widgets only draw it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, tzinfo
from typing import Any

from core import safe_line, safe_text

__all__ = [
    "COMMANDS",
    "MARKS",
    "ChatMessage",
    "Command",
    "CommandSpec",
    "Conversation",
    "InputHistory",
    "MessageWindow",
    "SecurityRecord",
    "body_refusal",
    "day_of",
    "find_urls",
    "next_unread",
    "parse_command",
    "preview",
    "short_key",
    "sort_conversations",
]

# Delivery marks, one glyph per state (the contract's states).
MARKS: dict[str, str] = {
    "pending": "◷",
    "relayed": "↪",
    "sent": "✓",
    "delivered": "✓✓",
    "read": "✓✓ read",
    "failed": "✗",
    "received": "",
}

URL_RE = re.compile(r"\b(?:https?|gemini|ftp)://[^\s<>\"'`]+[^\s<>\"'`.,;:!?)\]]")


def short_key(key: str) -> str:
    key = safe_line(key)
    return f"{key[:8]}…{key[-4:]}" if len(key) > 12 else key


def find_urls(text: str) -> list[tuple[int, int]]:
    """(start, end) spans of the URLs in ``text``."""
    return [m.span() for m in URL_RE.finditer(text)]


def preview(body: str, width: int = 40) -> str:
    line = safe_line(" ".join(body.split()))
    return line if len(line) <= width else line[: width - 1] + "…"


def day_of(ts: float, tz: tzinfo | None) -> str:
    return datetime.fromtimestamp(ts, tz).strftime("%Y-%m-%d")


def body_refusal(body: str, max_bytes: int) -> str | None:
    """Why ``body`` cannot be sent, or None. Checked before anything leaves the UI."""
    if not body.strip():
        return "nothing to send"
    size = len(body.encode("utf-8"))
    if size > max_bytes:
        return f"message too long: {size} bytes, the limit is {max_bytes} bytes"
    return None


@dataclass(frozen=True)
class ChatMessage:
    id: str
    conversation: str
    direction: str  # "in" | "out"
    sender: str
    recipient: str
    body: str
    ts: float
    state: str
    seq: int
    reply_to: str | None = None
    received: float | None = None
    error: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ChatMessage:
        try:
            return cls(
                id=str(data["id"]),
                conversation=str(data["conversation"]),
                direction=str(data["direction"]),
                sender=str(data.get("from", "")),
                recipient=str(data.get("to", "")),
                body=safe_text(str(data.get("body", ""))),  # remote text: escaped once
                ts=float(data["ts"]),
                state=str(data.get("state", "received")),
                seq=int(data["seq"]),
                reply_to=data.get("reply_to") or None,
                received=None if data.get("received") is None else float(data["received"]),
                error=safe_line(data["error"]) if data.get("error") else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed chat message from the node: {exc}") from None

    @property
    def outgoing(self) -> bool:
        return self.direction == "out"


@dataclass(frozen=True)
class Conversation:
    key: str
    alias: str | None
    trust: str
    unread: int
    online: bool
    request: bool
    muted: bool
    last: ChatMessage | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Conversation:
        last = data.get("last")
        return cls(
            key=str(data["key"]),
            alias=safe_line(data["alias"]) if data.get("alias") else None,
            trust=str(data.get("trust", "unknown")),
            unread=int(data.get("unread", 0)),
            online=bool(data.get("online", False)),
            request=bool(data.get("request", False)),
            muted=bool(data.get("muted", False)),
            last=ChatMessage.from_json(last) if last else None,
        )

    @property
    def name(self) -> str:
        return self.alias or short_key(self.key)

    @property
    def activity(self) -> float:
        return self.last.ts if self.last else 0.0


def sort_conversations(
    convs: Iterable[Conversation],
) -> tuple[list[Conversation], list[Conversation]]:
    """(conversations, message requests), each newest activity first."""
    ordered = sorted(convs, key=lambda c: (-c.activity, c.name))
    return [c for c in ordered if not c.request], [c for c in ordered if c.request]


def next_unread(order: Sequence[Conversation], current: str | None) -> Conversation | None:
    """The next conversation with unread messages after ``current``, wrapping around."""
    if not order:
        return None
    keys = [c.key for c in order]
    start = keys.index(current) + 1 if current in keys else 0
    for i in range(len(order)):
        conv = order[(start + i) % len(order)]
        if conv.unread and conv.key != current:
            return conv
    return None


@dataclass(frozen=True)
class SecurityRecord:
    id: str
    key: str
    kind: str
    detail: str
    ts: float
    acknowledged: bool

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SecurityRecord:
        return cls(
            id=str(data["id"]),
            key=safe_line(data.get("key", "")),
            kind=safe_line(data.get("kind", "unknown")),
            detail=safe_line(data.get("detail", "")),
            ts=float(data.get("ts", 0.0)),
            acknowledged=bool(data.get("acknowledged", False)),
        )


@dataclass
class _Page:
    messages: list[ChatMessage]


@dataclass
class MessageWindow:
    """A bounded window of one conversation's messages, loaded page by page.

    Pages come from ``chat.history`` (oldest first) and are keyed by ``seq``. Scrolling up
    prepends older pages (``before_seq=oldest_seq``); when more than ``max_pages`` are held,
    the newest pages are dropped and remembered as ``(before_seq, count)`` so scrolling back
    down reloads exactly them. Live messages are appended only while the window reaches the
    live end; otherwise they are counted as ``unseen_below``.
    """

    page_size: int = 200
    max_pages: int = 10
    messages: list[ChatMessage] = field(default_factory=list)
    more_older: bool = False
    dropped_newer: list[tuple[int, int]] = field(default_factory=list)  # stack, top = oldest
    unseen_below: int = 0
    _page_sizes: list[int] = field(default_factory=list)
    _by_id: dict[str, int] = field(default_factory=dict)

    # -- loading
    def reset(self, messages: Sequence[ChatMessage], more: bool) -> None:
        self.messages = list(messages)
        self.more_older = more
        self.dropped_newer.clear()
        self.unseen_below = 0
        self._page_sizes = [len(self.messages)] if self.messages else []
        self._reindex()

    @property
    def at_live_end(self) -> bool:
        return not self.dropped_newer

    def older_cursor(self) -> int | None:
        """``before_seq`` for the next older page, or None when the history is all here."""
        if not self.more_older or not self.messages:
            return None
        return self.messages[0].seq

    def newer_request(self) -> tuple[int, int] | None:
        """``(before_seq, limit)`` that reloads the newest dropped page, or None."""
        return self.dropped_newer[-1] if self.dropped_newer else None

    def prepend(self, older: Sequence[ChatMessage], more: bool) -> tuple[int, int]:
        """Add an older page. Returns (messages added at the top, messages dropped at the
        bottom) so the view can keep its position."""
        first = self.messages[0].seq if self.messages else None
        page = [m for m in older if first is None or m.seq < first]
        self.more_older = more if page or not older else self.more_older
        if not older:
            self.more_older = False
        if not page:
            return 0, 0
        self.messages[:0] = page
        self._page_sizes.insert(0, len(page))
        dropped = 0
        while len(self._page_sizes) > self.max_pages:
            count = self._page_sizes.pop()
            tail = self.messages[-count:]
            del self.messages[-count:]
            self.dropped_newer.append((tail[-1].seq + 1, count))
            dropped += count
        self._reindex()
        return len(page), dropped

    def append_newer(self, newer: Sequence[ChatMessage]) -> tuple[int, int]:
        """Add back the newest dropped page (the reply to :meth:`newer_request`).
        Returns (messages added at the bottom, messages dropped at the top)."""
        if not self.dropped_newer:
            return 0, 0
        self.dropped_newer.pop()
        last = self.messages[-1].seq if self.messages else -1
        page = [m for m in newer if m.seq > last]
        if page:
            self.messages.extend(page)
            self._page_sizes.append(len(page))
        dropped = 0
        while len(self._page_sizes) > self.max_pages:
            count = self._page_sizes.pop(0)
            del self.messages[:count]
            dropped += count
            self.more_older = True
        if not self.dropped_newer:
            self.unseen_below = 0
        self._reindex()
        return len(page), dropped

    def add_live(self, message: ChatMessage) -> bool:
        """A new message from an event. True when it was appended to the window."""
        if message.id in self._by_id:
            self.update(message)
            return False
        if not self.at_live_end:
            self.unseen_below += 1
            return False
        if self.messages and message.seq < self.messages[-1].seq:
            return False  # older than what is shown: it belongs to an earlier page
        self.messages.append(message)
        if self._page_sizes and self._page_sizes[-1] < self.page_size:
            self._page_sizes[-1] += 1
        else:
            self._page_sizes.append(1)
        if len(self._page_sizes) > self.max_pages + 1:
            count = self._page_sizes.pop(0)
            del self.messages[:count]
            self.more_older = True
            self._reindex()
        else:
            self._by_id[message.id] = len(self.messages) - 1
        return True

    def update(self, message: ChatMessage) -> int | None:
        index = self._by_id.get(message.id)
        if index is not None:
            self.messages[index] = message
        return index

    def set_state(self, message_id: str, state: str, error: str | None) -> int | None:
        """Apply a ``chat.state`` event; the index of the changed message, or None. The
        error is the peer's words (an ACK's reason): escaped here like every remote text."""
        index = self._by_id.get(message_id)
        if index is None:
            return None
        shown = safe_line(error) if error else None
        self.messages[index] = replace(self.messages[index], state=state, error=shown)
        return index

    def index_of(self, message_id: str) -> int | None:
        return self._by_id.get(message_id)

    def get(self, message_id: str) -> ChatMessage | None:
        index = self._by_id.get(message_id)
        return None if index is None else self.messages[index]

    def holds_seq(self, seq: int) -> bool:
        return bool(self.messages) and self.messages[0].seq <= seq <= self.messages[-1].seq

    def _reindex(self) -> None:
        self._by_id = {m.id: i for i, m in enumerate(self.messages)}


class InputHistory:
    """Sent lines, browsed with up/down; the draft being typed is kept aside."""

    def __init__(self, max_entries: int = 200) -> None:
        self._entries: list[str] = []
        self._max = max_entries
        self._pos: int | None = None
        self._draft = ""

    def add(self, text: str) -> None:
        if text and (not self._entries or self._entries[-1] != text):
            self._entries.append(text)
            del self._entries[: -self._max]
        self._pos = None

    def older(self, current: str) -> str | None:
        if not self._entries:
            return None
        if self._pos is None:
            self._draft = current
            self._pos = len(self._entries)
        if self._pos == 0:
            return None
        self._pos -= 1
        return self._entries[self._pos]

    def newer(self) -> str | None:
        if self._pos is None:
            return None
        self._pos += 1
        if self._pos >= len(self._entries):
            self._pos = None
            return self._draft
        return self._entries[self._pos]


@dataclass(frozen=True)
class CommandSpec:
    name: str
    usage: str
    help: str
    min_args: int = 0
    max_args: int = 0  # -1: the rest of the line is one argument


COMMANDS: dict[str, CommandSpec] = {
    spec.name: spec
    for spec in [
        CommandSpec("add", "/add KEY[@mesh] [ALIAS]", "add a contact by key or key@mesh", 1, 2),
        CommandSpec("alias", "/alias [CONTACT] NAME", "rename a contact (default: this one)", 1, 2),
        CommandSpec(
            "block", "/block [CONTACT]", "block a contact: their messages are dropped", 0, 1
        ),
        CommandSpec("unblock", "/unblock [CONTACT]", "unblock a contact", 0, 1),
        CommandSpec("accept", "/accept [CONTACT]", "accept a message request", 0, 1),
        CommandSpec("ignore", "/ignore [CONTACT]", "ignore a message request", 0, 1),
        CommandSpec("search", "/search TEXT", "search this conversation (ctrl+f)", 1, -1),
        CommandSpec("copy", "/copy [me|CONTACT]", "copy own or a contact's key@mesh", 0, 1),
        CommandSpec("qr", "/qr", "show own address as a QR code", 0, 0),
        CommandSpec("mute", "/mute [CONTACT]", "no bell or toast for a contact", 0, 1),
        CommandSpec("unmute", "/unmute [CONTACT]", "bell and toast again", 0, 1),
        CommandSpec("receipts", "/receipts on|off", "send read receipts to this contact", 1, 1),
        CommandSpec("retry", "/retry", "retry the failed messages of this conversation", 0, 0),
        CommandSpec("call", "/call [CONTACT]", "place a call (once calls are available)", 0, 1),
        CommandSpec(
            "security",
            "/security [ack all|ID|CONTACT]",
            "security records: count them, or acknowledge them",
            0,
            2,
        ),
        CommandSpec("help", "/help", "every key and command", 0, 0),
        CommandSpec("quit", "/quit", "leave the chat (the node keeps running)", 0, 0),
    ]
}


@dataclass(frozen=True)
class Command:
    name: str
    args: tuple[str, ...]


def parse_command(text: str) -> Command:
    """Parse a `/` command line; raises ValueError with the usage on a mistake."""
    if not text.startswith("/"):
        raise ValueError("not a command")
    head, _, rest = text[1:].strip().partition(" ")
    spec = COMMANDS.get(head.lower())
    if spec is None:
        raise ValueError(f"unknown command /{head} (try /help)")
    rest = rest.strip()
    if spec.max_args == -1:
        args: tuple[str, ...] = (rest,) if rest else ()
    else:
        args = tuple(rest.split())
    if len(args) < spec.min_args or (spec.max_args >= 0 and len(args) > spec.max_args):
        raise ValueError(f"usage: {spec.usage}")
    return Command(spec.name, args)
