"""Bars over the conversation: the security banner (stays until acknowledged) and the
message-request bar (accept / ignore / block)."""

from __future__ import annotations

from datetime import datetime, tzinfo

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Button, Static

from core import safe_line

from ..model import SecurityRecord

__all__ = ["CallBar", "RequestBar", "SecurityBanner", "explain"]

EXPLAIN = {
    "key-changed": (
        "The key that signs this contact's messages CHANGED. Someone may be impersonating "
        "them, or they reinstalled. Messages signed with the new key were refused. Check "
        "with them another way before you trust this conversation."
    ),
    "forged-sender": (
        "A message claiming to be from this contact was REFUSED: it did not come from their "
        "mesh address. Someone may be trying to impersonate them. Nothing from it was stored."
    ),
    "forged": (
        "A message claiming to be from this contact was REFUSED: it did not come from their "
        "mesh address or its signature did not verify. Nothing from it was stored."
    ),
}


def explain(record: SecurityRecord, name: str, tz: tzinfo | None) -> str:
    base = EXPLAIN.get(record.kind, f"Security event: {record.kind}.")
    when = datetime.fromtimestamp(record.ts, tz).strftime("%Y-%m-%d %H:%M") if record.ts else ""
    detail = f" ({record.detail})" if record.detail else ""
    return safe_line(f"⚠ {name}: {base}{detail} {when}".strip())


class SecurityBanner(Horizontal):
    class Acknowledged(Message):
        def __init__(self, record: SecurityRecord) -> None:
            super().__init__()
            self.record = record

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.record: SecurityRecord | None = None

    def compose(self) -> ComposeResult:
        yield Static("", id="banner-text", markup=False)
        yield Button("I understand", id="banner-ack", variant="error")

    def show(self, records: list[SecurityRecord], name: str, tz: tzinfo | None) -> None:
        pending = [r for r in records if not r.acknowledged]
        self.record = pending[0] if pending else None
        self.display = self.record is not None
        if self.record is not None:
            more = f"  (+{len(pending) - 1} more)" if len(pending) > 1 else ""
            self.query_one("#banner-text", Static).update(explain(self.record, name, tz) + more)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if self.record is not None:
            self.post_message(self.Acknowledged(self.record))


class CallBar(Horizontal):
    """An incoming call: accept or reject (through the node's call.* methods)."""

    class Decided(Message):
        def __init__(self, call_id: str, accept: bool) -> None:
            super().__init__()
            self.call_id = call_id
            self.accept = accept

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.call_id: str | None = None

    def compose(self) -> ComposeResult:
        yield Static("", id="call-text", markup=False)
        yield Button("Accept", id="call-accept", variant="success")
        yield Button("Reject", id="call-reject", variant="error")

    def ring(self, call_id: str, who: str) -> None:
        self.call_id = call_id
        self.query_one("#call-text", Static).update(f"📞 incoming call from {safe_line(who)}")
        self.display = True

    def stop(self, call_id: str | None = None) -> None:
        if call_id is None or call_id == self.call_id:
            self.call_id = None
            self.display = False

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if self.call_id is not None:
            self.post_message(self.Decided(self.call_id, event.button.id == "call-accept"))
            self.stop()


class RequestBar(Horizontal):
    class Decided(Message):
        def __init__(self, action: str) -> None:
            super().__init__()
            self.action = action

    def compose(self) -> ComposeResult:
        yield Static(
            "Message request: this key is not in your contacts.", id="request-text", markup=False
        )
        yield Button("Accept", id="request-accept", variant="success")
        yield Button("Ignore", id="request-ignore")
        yield Button("Block", id="request-block", variant="error")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        action = (event.button.id or "").removeprefix("request-")
        self.post_message(self.Decided(action))
