"""`mesh chat [CONTACT] [--start]`: the chat UI attached to the running node.

The app talks to the node only through its client (control API calls + one filtered
event stream); it never opens a database. ``main(args)`` is what the CLI calls.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import replace
from datetime import tzinfo
from pathlib import Path
from typing import Any, ClassVar

from textual import events, on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.widgets import Footer, Input, OptionList, Static

from core import MeshError, NodeNotRunning, resolve_data_dir, safe_line

from .client import ChatBackend, ChatClient
from .messages import ConnectionLost, NodeEvent
from .model import (
    COMMANDS,
    ChatMessage,
    Command,
    Conversation,
    SecurityRecord,
    body_refusal,
    next_unread,
    parse_command,
    preview,
    short_key,
)
from .screens.help import HelpScreen
from .screens.qr import QrScreen
from .widgets.banner import CallBar, RequestBar, SecurityBanner
from .widgets.composer import Composer
from .widgets.conversation_list import ConversationList
from .widgets.message_log import MessageLog

__all__ = ["ChatApp", "main"]

TYPING_SEND_EVERY = 3.0  # s between our typing notices while typing
TYPING_SHOWN_FOR = 6.0  # s a peer's typing notice is shown
START_TIMEOUT = 20.0  # s to wait for `mesh up --start` to answer
SCROLL_PAGE = 100  # messages per keyset page while scrolling (the first page is page_size)
JUMP_PAGE = 500  # messages per request when walking back to a search hit
MAX_JUMP_PAGES = 400
NARROW = 70  # columns below which the conversation list shrinks to a share
SECURITY_PAGE = 200  # unacknowledged security records held by the UI
RECONNECT_MAX = 5.0  # s between attempts to reach a node that went away
NOTIFY_EVERY = 5.0  # s: one bell and one toast per conversation (or kind) at most


def _key_from(text: str) -> str | None:
    """A 64-hex key from ``key``/``key@mesh``, or None."""
    candidate = text.strip().lower().removesuffix("@mesh")
    if len(candidate) == 64 and all(c in "0123456789abcdef" for c in candidate):
        return candidate
    return None


class ChatCommands(Provider):
    """The `/` commands in Textual's command palette (ctrl+p)."""

    async def discover(self) -> Hits:
        app = self.app
        assert isinstance(app, ChatApp)
        for spec in COMMANDS.values():
            yield DiscoveryHit(
                spec.usage, lambda s=spec: app.palette_command(s.name), help=spec.help
            )

    async def search(self, query: str) -> Hits:
        app = self.app
        assert isinstance(app, ChatApp)
        matcher = self.matcher(query)
        for spec in COMMANDS.values():
            score = matcher.match(f"{spec.usage} {spec.help}")
            if score > 0:
                yield Hit(
                    score,
                    matcher.highlight(spec.usage),
                    lambda s=spec: app.palette_command(s.name),
                    help=spec.help,
                )


class ChatApp(App[int]):
    CSS_PATH = "chat.tcss"
    TITLE = "mesh chat"
    COMMANDS = App.COMMANDS | {ChatCommands}
    BINDINGS: ClassVar[list[Binding]] = [  # type: ignore[assignment]
        Binding("f1", "help", "Help"),
        Binding("alt+n", "next_unread", "Next unread"),
        Binding("alt+down", "step_conversation(1)", "Next", show=False),
        Binding("alt+up", "step_conversation(-1)", "Previous", show=False),
        Binding("ctrl+f", "search", "Search"),
        Binding("f3", "hit(1)", "Next hit", show=False),
        Binding("shift+f3", "hit(-1)", "Previous hit", show=False),
        Binding("escape", "escape", "Back", show=False),
        Binding("ctrl+q", "quit", "Quit"),
    ]

    def __init__(
        self,
        client: ChatBackend,
        *,
        contact: str | None = None,
        tz: tzinfo | None = None,
        clock: Callable[[], float] = time.time,
        page_size: int = 200,
        freeze_gc: bool = False,
        reconnect: Callable[[], Awaitable[ChatBackend]] | None = None,
    ) -> None:
        super().__init__()
        self.freeze_gc = freeze_gc
        self.client = client
        self._connect_again = reconnect
        self.initial_contact = contact
        self.tz = tz
        self.clock = clock
        self.page_size = page_size
        self.info: dict[str, Any] = {}
        self.methods: set[str] = set()
        self.conversations: dict[str, Conversation] = {}
        self.names: dict[str, str] = {}
        self.current: str | None = None
        self.security: dict[str, SecurityRecord] = {}
        self.security_unacked = 0
        self._notified: dict[str, float] = {}  # what -> when it last rang (monotonic)
        self.typing_until: dict[str, float] = {}
        self.reply_to: ChatMessage | None = None
        self.hits: list[ChatMessage] = []
        self.hit_index = -1
        self.ready = asyncio.Event()
        self._last_typing_sent = 0.0
        self._refresh_pending = False
        self._read_pending = False

    # -- layout
    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            with Vertical(id="sidebar"):
                yield Static("Conversations", id="sidebar-title")
                yield ConversationList(id="conversations")
            with Vertical(id="pane"):
                yield Static("", id="header", markup=False)
                yield CallBar(id="call-bar")
                yield SecurityBanner(id="banner")
                yield RequestBar(id="request-bar")
                yield Input(placeholder="search this conversation — enter, f3 next", id="search")
                yield MessageLog(
                    tz=self.tz,
                    name_of=self.name_of,
                    fetch=self.fetch_page,
                    page_size=SCROLL_PAGE,
                    id="log",
                )
                yield Static("", id="reply-bar", markup=False)
                yield Composer(id="composer")
                yield Static("", id="status", markup=False)
        yield Footer()

    def on_resize(self, event: events.Resize) -> None:
        self.set_class(event.size.width < NARROW, "narrow")
        with contextlib.suppress(NoMatches):
            self.call_after_refresh(self._header)

    async def on_mount(self) -> None:
        self.set_class(self.size.width < NARROW, "narrow")
        for wid in ("#banner", "#request-bar", "#search", "#reply-bar", "#call-bar"):
            self.query_one(wid).display = False
        self.set_interval(1.0, self._expire_typing)
        self._start()

    @work(exclusive=True, group="startup")
    async def _start(self) -> None:
        try:
            self.info = await self.client.call("chat.info")
            with contextlib.suppress(MeshError):
                self.methods = set(await self.client.call("methods"))
            self._listen(await self.client.subscribe())  # before the state it updates
            await self._load_security()
            await self.refresh_conversations()
            target = None
            if self.initial_contact:
                target = await self.resolve(self.initial_contact)
            elif self.conversations:
                target = self.query_one(ConversationList).order[0].key
            if target:
                await self.open_conversation(target)
            else:
                self._header()
        except MeshError as exc:
            self.set_status(f"the node refused: {exc}", error=True)
        finally:
            self.ready.set()
        self.query_one(Composer).focus()
        if self.freeze_gc:
            # Everything built so far lives as long as the app: keep it out of the
            # collector's full passes, which otherwise stall page loads (the `mesh
            # chat` process is ours alone; tests leave this off).
            gc.freeze()

    @work(exclusive=True, group="events")
    async def _listen(self, events: AsyncIterator[dict[str, Any]]) -> None:
        try:
            async for event in events:
                self.post_message(NodeEvent(str(event.get("event")), event.get("data")))
        except MeshError as exc:
            self.post_message(ConnectionLost(str(exc)))
            return
        self.post_message(ConnectionLost("the node closed the connection"))

    async def _load_security(self) -> None:
        """The unacknowledged security records (one bounded page: the node keeps at
        most a few hundred, and only this many are shown)."""
        reply = await self.client.call("chat.security", unacknowledged=True, limit=SECURITY_PAGE)
        records = reply["records"] if isinstance(reply, dict) else reply
        self.security = {r.id: r for r in map(SecurityRecord.from_json, records)}
        self.security_unacked = (
            int(reply.get("unacknowledged", len(records)))
            if isinstance(reply, dict)
            else len(records)
        )

    # -- names and conversations
    def name_of(self, key: str) -> str:
        if key and key == self.info.get("key"):
            return "you"
        return safe_line(self.names.get(key) or short_key(key))

    async def refresh_conversations(self) -> None:
        convs = [Conversation.from_json(c) for c in await self.client.call("chat.conversations")]
        # The open conversation is being read: its count does not go up while a message
        # that just arrived waits for chat.read (marked read soon after).
        convs = [replace(c, unread=0) if c.key == self.current else c for c in convs]
        self.conversations = {c.key: c for c in convs}
        for conv in convs:
            self.names[conv.key] = conv.name
        warn = {r.key for r in self.security.values() if not r.acknowledged}
        self.query_one(ConversationList).show(convs, self.current, warn)
        self._header()

    def _schedule_refresh(self) -> None:
        if not self._refresh_pending:
            self._refresh_pending = True
            self.set_timer(0.15, self._do_refresh)

    async def _do_refresh(self) -> None:
        self._refresh_pending = False
        with contextlib.suppress(MeshError, NoMatches):  # NoMatches: the app is closing
            await self.refresh_conversations()

    async def resolve(self, name: str) -> str | None:
        wanted = name.strip()
        key = _key_from(wanted)
        if key:
            return key
        for conv in self.conversations.values():
            if conv.alias == wanted:
                return conv.key
        with contextlib.suppress(MeshError):
            for contact in await self.client.call("contacts.list"):
                if contact.get("alias") == wanted:
                    return str(contact["key"])
        self.set_status(
            f"no contact called {wanted!r}: use an alias, a key or key@mesh", error=True
        )
        return None

    async def open_conversation(self, key: str) -> None:
        self.current = key
        self.reply_to = None
        self.hits, self.hit_index = [], -1
        log = self.query_one(MessageLog)
        log.search = None
        result = await self.client.call("chat.history", contact=key, limit=self.page_size)
        log.show([ChatMessage.from_json(m) for m in result["messages"]], bool(result["more"]))
        conv = self.conversations.get(key)
        if conv is not None and conv.unread:
            await self.client.call("chat.read", contact=key)
        self._update_bars()
        await self.refresh_conversations()

    def _header(self) -> None:
        header = self.query_one("#header", Static)
        if self.current is None:
            header.update(f"you are {self.info.get('address', '?')} — /add KEY@mesh to start")
            return
        conv = self.conversations.get(self.current)
        online = "● online" if conv and conv.online else "○ offline"
        typing = "  typing…" if self.typing_until.get(self.current, 0) > self.clock() else ""
        muted = "  (muted)" if conv and conv.muted else ""
        head = f"{self.name_of(self.current)}  {online}{muted}{typing}"
        address = f"{self.current}@mesh"
        room = header.size.width or max(self.size.width - 36, 20)  # before the first layout
        if len(head) + 3 + len(address) > room:  # narrow: the key's start and end
            address = f"{short_key(self.current)}@mesh"
        header.update(safe_line(f"{head}   {address}"))

    def _update_bars(self) -> None:
        mine = [r for r in self.security.values() if r.key == self.current]
        name = self.name_of(self.current or "")
        self.query_one(SecurityBanner).show(sorted(mine, key=lambda r: r.ts), name, self.tz)
        conv = self.conversations.get(self.current or "")
        self.query_one(RequestBar).display = bool(conv and conv.request)
        reply = self.query_one("#reply-bar", Static)
        reply.display = self.reply_to is not None
        if self.reply_to is not None:
            who = self.name_of(self.reply_to.sender)
            reply.update(
                f"↪ replying to {who}: {preview(self.reply_to.body, 60)}  (escape cancels)"
            )

    def set_status(self, text: str, *, error: bool = False) -> None:
        status = self.query_one("#status", Static)
        status.update(safe_line(text))  # errors can quote what a peer or the node said
        status.set_class(error, "error")

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: Any = "information",
        timeout: float | None = None,
        markup: bool = True,
    ) -> None:
        """Every toast is plain, escaped text: names and previews are a peer's words
        (no markup, no control characters)."""
        super().notify(
            safe_line(message),
            title=safe_line(title),
            severity=severity,
            timeout=timeout,
            markup=False,
        )

    # -- events from the node
    async def on_node_event(self, event: NodeEvent) -> None:
        kind, data = event.kind, event.data or {}
        try:
            log = self.query_one(MessageLog)
        except NoMatches:  # shutting down (the screen is gone): nothing to show it on
            return
        if kind == "chat.message":
            message = ChatMessage.from_json(data)
            if message.conversation == self.current:
                log.add_live(message)
                if log.window.unseen_below:
                    n = log.window.unseen_below
                    self.set_status(f"{n} new message(s) below — end jumps to the newest")
                if not message.outgoing:
                    self.typing_until.pop(message.conversation, None)
                    self._mark_read_soon()
            elif not message.outgoing:
                self._notify_message(message)
            self._schedule_refresh()
        elif kind == "chat.state":
            if data.get("conversation") == self.current:
                log.set_state(str(data["id"]), str(data["state"]), data.get("error"))
            self._schedule_refresh()
        elif kind == "chat.typing":
            key = str(data.get("conversation"))
            if data.get("active"):
                self.typing_until[key] = self.clock() + TYPING_SHOWN_FOR
            else:
                self.typing_until.pop(key, None)
            self._header()
        elif kind == "chat.security.acked":
            with contextlib.suppress(MeshError):
                await self._load_security()
            self._update_bars()
            self._schedule_refresh()
        elif kind == "chat.security":
            record = SecurityRecord.from_json(data)
            self.security[record.id] = record
            self.security_unacked += 0 if record.acknowledged else 1
            while len(self.security) > SECURITY_PAGE:
                self.security.pop(next(iter(self.security)))
            if not record.acknowledged and self._may_notify(f"security {record.key}"):
                self.bell()
                self.notify(
                    f"security: {record.kind} for {self.name_of(record.key)}",
                    severity="error",
                    timeout=10,
                )
            self._update_bars()
            self._schedule_refresh()
        elif kind == "chat.request":
            if self._may_notify("request"):
                self.notify(f"message request from {short_key(str(data.get('key')))}")
            self._schedule_refresh()
        elif kind == "call.incoming":
            who = self.name_of(str(data.get("peer") or ""))
            self.bell()
            self.notify(f"incoming call from {who}", timeout=15)
            self.query_one(CallBar).ring(str(data.get("id")), who)
        elif kind in ("call.ended", "call.missed") or (
            kind == "call.state" and data.get("state") != "ringing"
        ):
            self.query_one(CallBar).stop(str(data.get("id")))
        elif kind == "events.lagged":
            # The node dropped events for us (we were slow): what is shown may be stale.
            self._schedule_refresh()
            if self.current is not None and log.window.at_live_end:
                await self.open_conversation(self.current)
        elif kind.startswith(("chat.", "contact.", "peer.")):
            self._schedule_refresh()

    def on_connection_lost(self, event: ConnectionLost) -> None:
        if self._connect_again is None:
            self.set_status(f"disconnected: {event.reason} — restart `mesh chat`", error=True)
            return
        self.set_status(f"reconnecting… (disconnected: {event.reason})", error=True)
        self._reconnect()

    @work(exclusive=True, group="reconnect")
    async def _reconnect(self) -> None:
        """Connect to the node again by itself (it restarted), every 0.5 s growing to
        5 s, for as long as the UI runs; then load everything again and say so."""
        assert self._connect_again is not None
        delay = 0.5
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)
            try:
                client = await self._connect_again()
                await client.call("chat.info")
            except (MeshError, OSError):
                continue
            old, self.client = self.client, client
            with contextlib.suppress(Exception):
                await old.close()
            self.initial_contact = self.current or self.initial_contact
            self.set_status("reconnected to the node")
            self._start()
            return

    def _notify_message(self, message: ChatMessage) -> None:
        conv = self.conversations.get(message.conversation)
        if conv is not None and conv.muted:
            return
        if not self._may_notify(f"message {message.conversation}"):
            return  # one bell and one toast per conversation per NOTIFY_EVERY s
        self.bell()
        self.notify(
            preview(message.body, 60), title=f"from {self.name_of(message.conversation)}", timeout=5
        )

    def _may_notify(self, what: str) -> bool:
        """Coalesce notifications: at most one per ``what`` every NOTIFY_EVERY seconds (a
        flood rings once, and the toasts never pile up); the table stays bounded."""
        now = time.monotonic()
        last = self._notified.get(what)
        if last is not None and now - last < NOTIFY_EVERY:
            return False
        self._notified[what] = now
        if len(self._notified) > 512:
            for key in [k for k, t in self._notified.items() if now - t >= NOTIFY_EVERY]:
                del self._notified[key]
            while len(self._notified) > 512:
                self._notified.pop(next(iter(self._notified)))
        return True

    def _mark_read_soon(self) -> None:
        if not self._read_pending:
            self._read_pending = True
            self.set_timer(0.3, self._do_read)

    async def _do_read(self) -> None:
        self._read_pending = False
        if self.current is not None:
            with contextlib.suppress(MeshError):
                await self.client.call("chat.read", contact=self.current)
                self._schedule_refresh()

    def _expire_typing(self) -> None:
        now = self.clock()
        expired = [k for k, until in self.typing_until.items() if until <= now]
        for key in expired:
            del self.typing_until[key]
        if expired:
            with contextlib.suppress(NoMatches):  # the app is closing
                self._header()

    # -- paging
    async def fetch_page(
        self, before_seq: int, limit: int
    ) -> tuple[list[ChatMessage], bool] | None:
        """A keyset page of the open conversation (for the message log)."""
        key = self.current
        if key is None:
            return None
        result = await self.client.call(
            "chat.history", contact=key, limit=limit, before_seq=before_seq
        )
        if key != self.current:
            return None
        return [ChatMessage.from_json(m) for m in result["messages"]], bool(result["more"])

    # -- list
    @on(OptionList.OptionSelected, "#conversations")
    async def _picked(self, event: OptionList.OptionSelected) -> None:
        if event.option.id and event.option.id != self.current:
            await self.open_conversation(event.option.id)
            self.query_one(Composer).focus()

    async def action_next_unread(self) -> None:
        conv = next_unread(self.query_one(ConversationList).order, self.current)
        if conv is None:
            self.notify("no unread messages")
            return
        await self.open_conversation(conv.key)

    async def action_step_conversation(self, step: int) -> None:
        order = self.query_one(ConversationList).order
        if not order:
            return
        keys = [c.key for c in order]
        index = keys.index(self.current) if self.current in keys else -step
        await self.open_conversation(keys[(index + step) % len(keys)])

    # -- composing
    @on(Composer.Typing)
    async def _typing(self) -> None:
        now = self.clock()
        if self.current is None or now - self._last_typing_sent < TYPING_SEND_EVERY:
            return
        self._last_typing_sent = now
        with contextlib.suppress(MeshError):
            await self.client.call("chat.typing", contact=self.current, active=True)

    @on(Composer.Submitted)
    async def _submitted(self, event: Composer.Submitted) -> None:
        text = event.text
        if text.startswith("/") and not text.startswith("//"):
            try:
                command = parse_command(text.strip())
            except ValueError as exc:
                self.set_status(str(exc), error=True)
                event.composer.restore(text)
                return
            event.composer.sent(text)
            await self.run_command(command)
            return
        if text.startswith("//"):
            text = text[1:]
        if self.current is None:
            self.set_status("open a conversation first (/add KEY@mesh)", error=True)
            event.composer.restore(event.text)
            return
        refusal = body_refusal(text, int(self.info.get("max_body_bytes", 16384)))
        if refusal is not None:
            self.set_status(f"not sent: {refusal}", error=True)
            if text.strip():
                event.composer.restore(event.text)
            return
        params: dict[str, Any] = {"contact": self.current, "body": text}
        if self.reply_to is not None:
            params["reply_to"] = self.reply_to.id
        try:
            sent = ChatMessage.from_json(await self.client.call("chat.send", **params))
        except MeshError as exc:
            self.set_status(f"not sent: {exc}", error=True)
            event.composer.restore(event.text)
            return
        event.composer.sent(event.text)
        self.reply_to = None
        self._last_typing_sent = 0.0
        self._update_bars()
        self.set_status("")
        if sent.conversation == self.current:
            self.query_one(MessageLog).add_live(sent)
        self._schedule_refresh()

    @on(MessageLog.Latest)
    async def _latest(self) -> None:
        if self.current is not None:
            await self.open_conversation(self.current)
            self.set_status("")

    @on(MessageLog.Reply)
    def _reply(self, event: MessageLog.Reply) -> None:
        self.reply_to = event.message
        self._update_bars()
        self.query_one(Composer).focus()

    @on(MessageLog.Retry)
    async def _retry(self, event: MessageLog.Retry) -> None:
        await self._call_ok(
            "chat.retry", f"retrying {preview(event.message.body, 30)}", id=event.message.id
        )

    # -- bars
    @on(SecurityBanner.Acknowledged)
    async def _ack(self, event: SecurityBanner.Acknowledged) -> None:
        await self.client.call("chat.security.ack", id=event.record.id)
        rec = event.record
        self.security[rec.id] = SecurityRecord(rec.id, rec.key, rec.kind, rec.detail, rec.ts, True)
        self._update_bars()
        await self.refresh_conversations()

    @on(CallBar.Decided)
    async def _call_decided(self, event: CallBar.Decided) -> None:
        if not event.accept:
            await self._call_ok("call.reject", "call rejected", id=event.call_id)
        elif not await self._open_call_page("the call rings there: accept it on the page"):
            # No page on this node: answered here, audio only, through the node.
            params = {"id": event.call_id, "audio_only": True}
            await self._call_ok("call.answer", "call accepted (audio only)", **params)

    async def _open_call_page(self, said: str, contact: str | None = None) -> bool:
        """The node's call page (with its access token; preset on ``contact``) in the
        browser; False when the node has none."""
        if "call.page" not in self.methods:
            return False
        try:
            info = await self.client.call("call.page", **({"contact": contact} if contact else {}))
        except MeshError:  # the page is off ([video] page = "off"): done without it
            return False
        url = info.get("url") if isinstance(info, dict) else None
        if not url:
            return False
        self.open_url(str(url))
        self.set_status(f"call page opened in the browser: {said}")
        return True

    @on(RequestBar.Decided)
    async def _decided(self, event: RequestBar.Decided) -> None:
        await self.run_command(Command(event.action, ()))

    # -- commands
    def palette_command(self, name: str) -> None:
        spec = COMMANDS[name]
        composer = self.query_one(Composer)
        if spec.min_args == 0 and spec.max_args <= 0:
            self.run_worker(self.run_command(Command(name, ())))
            return
        composer.load_text(f"/{name} ")
        composer.move_cursor(composer.document.end)
        composer.focus()

    async def _target(self, args: Iterable[str]) -> str | None:
        given = list(args)
        if given:
            return await self.resolve(given[0])
        if self.current is None:
            self.set_status("no conversation open: name the contact", error=True)
        return self.current

    async def _call_ok(self, method: str, done: str, **params: Any) -> Any:
        try:
            result = await self.client.call(method, **params)
        except MeshError as exc:
            self.set_status(f"{method.split('.')[-1]}: {exc}", error=True)
            return None
        self.set_status(done)
        self._schedule_refresh()
        return result

    async def run_command(self, command: Command) -> None:
        name, args = command.name, command.args
        if name == "help":
            self.action_help()
        elif name == "quit":
            self.exit(0)
        elif name == "qr":
            self.push_screen(QrScreen(f"{self.info.get('key', '')}@mesh"))
        elif name == "add":
            key = _key_from(args[0])
            if key is None:
                self.set_status(f"{args[0]!r} is not a 64-hex key or key@mesh", error=True)
                return
            params: dict[str, Any] = {"key": key}
            if len(args) > 1:
                params["alias"] = args[1]
            if await self._call_ok("contacts.add", f"added {args[-1]}", **params) is not None:
                if len(args) > 1:
                    self.names[key] = args[1]
                await self.refresh_conversations()
                await self.open_conversation(key)
        elif name == "alias":
            target = await self._target(args[:-1])
            if target:
                await self._call_ok(
                    "contacts.rename", f"renamed to {args[-1]}", contact=target, alias=args[-1]
                )
                self.names[target] = args[-1]
                self.query_one(MessageLog).rebuild()
        elif name in ("block", "unblock"):
            target = await self._target(args)
            if target:
                await self._call_ok(
                    f"contacts.{name}", f"{name}ed {self.name_of(target)}", contact=target
                )
                with contextlib.suppress(MeshError):
                    await self.refresh_conversations()  # a blocked request is no request
                if name == "block" and target in self.conversations:
                    conv = self.conversations[target]
                    self.conversations[target] = replace(conv, request=False)
                self._update_bars()
        elif name in ("accept", "ignore"):
            target = await self._target(args)
            if target:
                await self._call_ok(
                    f"chat.{name}", f"{name}ed {self.name_of(target)}", contact=target
                )
                await self.refresh_conversations()
                self._update_bars()
        elif name in ("mute", "unmute"):
            target = await self._target(args)
            if target:
                await self._call_ok(
                    "chat.mute",
                    f"{name}d {self.name_of(target)}",
                    contact=target,
                    muted=name == "mute",
                )
        elif name == "receipts":
            if self.current is not None and args[0] in ("on", "off"):
                await self._call_ok(
                    "chat.receipts",
                    f"read receipts {args[0]}",
                    contact=self.current,
                    read_receipts=args[0] == "on",
                )
            else:
                self.set_status("usage: /receipts on|off (in a conversation)", error=True)
        elif name == "copy":
            await self._copy(args)
        elif name == "search":
            await self.search(args[0])
        elif name == "retry":
            log = self.query_one(MessageLog)
            failed = [m for m in log.window.messages if m.state == "failed"]
            for message in failed:
                await self._call_ok(
                    "chat.retry", f"retrying {len(failed)} message(s)", id=message.id
                )
            if not failed:
                self.set_status("nothing failed in this conversation")
        elif name == "call":
            await self._call(args)
        elif name == "security":
            await self._security_command(args)

    async def _security_command(self, args: tuple[str, ...]) -> None:
        """/security: how many records wait; /security ack all|ID|CONTACT acknowledges."""
        if not args:
            with contextlib.suppress(MeshError):
                await self._load_security()
            pending = sorted(self.security.values(), key=lambda r: -r.ts)
            if not pending:
                self.set_status("no unacknowledged security records")
                return
            latest = pending[0]
            self.set_status(
                f"{self.security_unacked} unacknowledged security record(s); latest "
                f"#{latest.id} {latest.kind} for {self.name_of(latest.key)} — "
                "/security ack all (or an id, or a contact)"
            )
            return
        if args[0] != "ack" or len(args) > 2:
            self.set_status("usage: /security [ack all|ID|CONTACT]", error=True)
            return
        target = args[1] if len(args) > 1 else "all"
        params: dict[str, Any]
        if target == "all":
            params = {"all": True}
        elif target.isdigit():
            params = {"id": target}
        else:
            key = await self.resolve(target)
            if key is None:
                return
            params = {"all": True, "contact": key}
        result = await self._call_ok("chat.security.ack", "acknowledged", **params)
        if result is not None:
            n = result.get("acknowledged", 0) if isinstance(result, dict) else 0
            self.set_status(f"acknowledged {n} security record(s)")
            with contextlib.suppress(MeshError):
                await self._load_security()
            self._update_bars()
            await self.refresh_conversations()

    async def _copy(self, args: tuple[str, ...]) -> None:
        if not args or args[0] == "me":
            address = f"{self.info.get('key', '')}@mesh"
        else:
            target = await self.resolve(args[0])
            if target is None:
                return
            address = f"{target}@mesh"
        self.copy_to_clipboard(address)
        self.set_status(f"copied {address}")

    async def _call(self, args: tuple[str, ...]) -> None:
        if "call.place" not in self.methods:
            self.set_status("calls are not available on this node (no call service)", error=True)
            return
        target = await self._target(args)
        if target is None:
            return
        # The page preset on them: the call goes with the browser's camera and microphone
        # when the person presses Call there (a page dials only on its person's click).
        if await self._open_call_page(f"press Call to call {self.name_of(target)}", target):
            return
        await self._call_ok("call.place", f"calling {self.name_of(target)}…", contact=target)

    # -- search
    def action_search(self) -> None:
        box = self.query_one("#search", Input)
        box.display = True
        box.focus()

    @on(Input.Submitted, "#search")
    async def _search_submitted(self, event: Input.Submitted) -> None:
        if self.hits and event.value == self.query_one(MessageLog).search:
            await self.action_hit(1)
        else:
            await self.search(event.value)

    async def search(self, text: str) -> None:
        if self.current is None or not text.strip():
            return
        found = await self.client.call("chat.search", text=text, contact=self.current, limit=200)
        self.hits = sorted((ChatMessage.from_json(m) for m in found), key=lambda m: -m.seq)
        self.hit_index = -1
        self.query_one(MessageLog).set_search(text)
        if not self.hits:
            self.set_status(f"no message matches {text!r}")
            return
        await self.action_hit(1)

    async def action_hit(self, step: int) -> None:
        if not self.hits:
            return
        self.hit_index = (self.hit_index + step) % len(self.hits)
        hit = self.hits[self.hit_index]
        await self._jump(hit)
        self.set_status(
            f"hit {self.hit_index + 1} of {len(self.hits)} — f3 next, shift+f3 previous"
        )

    async def _jump(self, hit: ChatMessage) -> None:
        """Walk older pages (keyset) until the hit is held, then centre it."""
        log = self.query_one(MessageLog)
        key = self.current
        for _ in range(MAX_JUMP_PAGES):
            if log.jump_to(hit.id) or key != self.current:
                return
            cursor = log.window.older_cursor()
            if cursor is None or cursor <= hit.seq:
                break
            result = await self.client.call(
                "chat.history", contact=key, limit=JUMP_PAGE, before_seq=cursor
            )
            log.add_older(
                [ChatMessage.from_json(m) for m in result["messages"]], bool(result["more"])
            )
        if not log.jump_to(hit.id):
            self.set_status("that hit is no longer in this conversation", error=True)

    # -- misc actions
    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_escape(self) -> None:
        box = self.query_one("#search", Input)
        if box.display:
            box.display = False
            self.query_one(MessageLog).set_search(None)
            self.hits = []
            self.query_one(Composer).focus()
        elif self.reply_to is not None:
            self.reply_to = None
            self._update_bars()
        elif self.focused is self.query_one(Composer):
            self.query_one(MessageLog).focus()
        else:
            self.query_one(Composer).focus()


# -- the command


def start_node(data_dir: Path) -> subprocess.Popen[bytes]:
    """`mesh up` in the background, in its own session (closing the terminal leaves it
    running), its output in ``data_dir/mesh-up.log``."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    log_path = data_dir / "mesh-up.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "core.cli.main", "--data-dir", str(data_dir), "up"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
            env=os.environ.copy(),
        )
    print(f"started `mesh up` (pid {proc.pid}) in the background; log: {log_path}", file=sys.stderr)
    return proc


async def connect(data_dir: Path, start: bool) -> tuple[ChatClient, subprocess.Popen[bytes] | None]:
    """A client on the data dir's node; with ``start``, a node is started first when none
    runs. Returns the client and the node process it started (or None)."""
    path = data_dir / "control.sock"
    try:
        return await ChatClient.connect(path), None
    except NodeNotRunning:
        if not start:
            raise NodeNotRunning(
                f"no node is running for {data_dir}. Start one with `mesh up` "
                "(or run `mesh chat --start` to start it in the background)"
            ) from None
    proc = start_node(data_dir)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        await asyncio.sleep(0.2)
        try:
            client = await ChatClient.connect(path)
        except MeshError:
            if time.monotonic() > deadline:
                raise MeshError(
                    f"the node did not come up within {START_TIMEOUT:.0f} s; "
                    f"see {data_dir / 'mesh-up.log'}"
                ) from None
            continue
        return client, proc


def main(args: argparse.Namespace) -> int:
    """`mesh chat [CONTACT] [--start]` (called by apps/chat/cli.py)."""
    data_dir = resolve_data_dir(getattr(args, "data_dir", None))
    contact = getattr(args, "contact", None)
    start = bool(getattr(args, "start", False))

    async def run() -> int:
        client, _started = await connect(data_dir, start)  # the node outlives this process
        app: ChatApp | None = None
        try:
            try:
                await client.call("chat.info")
            except MeshError as exc:
                raise MeshError(f"the node runs without the chat service: {exc}") from None

            async def again() -> ChatBackend:
                return await ChatClient.connect(data_dir / "control.sock")

            app = ChatApp(client, contact=contact, freeze_gc=True, reconnect=again)
            code = await app.run_async()
            return code or 0
        finally:
            await client.close()
            if app is not None and app.client is not client:
                await app.client.close()

    return asyncio.run(run())
