"""UI mechanics that do not depend on a node: paging keeps the view still, the input's
keys, the length limit, reply quotes. Data from the scripted chat API (fixed keys)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC
from typing import Any

import pytest
from textual import events

from apps.chat.tui.app import ChatApp
from apps.chat.tui.widgets.composer import Composer
from apps.chat.tui.widgets.message_log import PREFETCH_SCREENS, MessageLog

from .scripted import ALICE, OWN, T0, ScriptedChat, message, scene

pytestmark = pytest.mark.timeout(60)


def long_history(count: int) -> ScriptedChat:
    chat = ScriptedChat()
    chat.contact(ALICE, "alice")
    for seq in range(1, count + 1):
        chat.add(message(seq, ALICE, f"message number {seq}", out=seq % 3 == 0, ts=T0 + seq * 7))
    return chat


@contextlib.asynccontextmanager
async def started(chat: ScriptedChat, **options: Any) -> AsyncIterator[tuple[ChatApp, Any]]:
    """The UI on the scripted API, open on alice, once it has loaded."""
    app = ChatApp(chat, contact="alice", tz=UTC, **options)
    async with app.run_test(size=(100, 30)) as pilot:
        await app.ready.wait()
        yield app, pilot


def visible_text(log: MessageLog) -> list[str]:
    return [log.render_line(y).text for y in range(log.scrollable_content_region.height)]


async def test_scrolling_up_loads_older_pages_without_moving_the_view() -> None:
    chat = long_history(2000)
    async with started(chat, page_size=300) as (app, pilot):
        await pilot.pause()
        log = app.query_one(MessageLog)
        assert len(log.window.messages) == 300  # far from the top: nothing fetched ahead
        assert "message number 2000" in "\n".join(visible_text(log))
        ahead = PREFETCH_SCREENS * log.scrollable_content_region.height
        log.scroll_to(y=ahead - 10, animate=False, immediate=True)
        before = visible_text(log)
        for _ in range(200):
            if len(log.window.messages) > 300:
                break
            await pilot.pause(0.05)
        assert len(log.window.messages) == 400
        # The page arrived above: what is on screen did not move.
        assert visible_text(log) == before
        history = [c for c in chat.calls if c[0] == "chat.history"]
        assert history[-1][1]["before_seq"] == 1701
        # Walking far up keeps a bounded window (no widget per message either).
        for _ in range(40):
            log.action_scroll_top()
            await pilot.pause(0.02)
        assert len(log.window.messages) <= log.window.max_pages * 100
        assert not log.children


async def test_multiline_input_keys_and_history() -> None:
    chat = scene()
    async with started(chat) as (app, pilot):
        composer = app.query_one(Composer)
        composer.focus()
        await pilot.press("h", "i", "ctrl+j", "t", "h", "e", "r", "e", "alt+enter", "x")
        assert composer.text == "hi\nthere\nx"
        await pilot.press("ctrl+a", "ctrl+k")
        assert composer.text == "hi\nthere\n"
        await pilot.press("backspace", "ctrl+w")
        assert composer.text == "hi\n"
        await pilot.press("ctrl+u", "backspace", "ctrl+e", "!", "enter")
        sent = [p for m, p in chat.calls if m == "chat.send"]
        assert sent[-1]["body"] == "hi!"
        assert composer.text == ""
        await pilot.press("d", "r", "a", "f", "t", "up")
        assert composer.text == "hi!"
        await pilot.press("down")
        assert composer.text == "draft"


async def test_paste_keeps_lines_and_over_limit_is_refused_before_sending() -> None:
    chat = scene()
    chat.max_body_bytes = 50
    async with started(chat) as (app, pilot):
        composer = app.query_one(Composer)
        composer.focus()
        app.post_message(events.Paste("a\nb\nc"))  # as the terminal driver delivers it
        await pilot.pause()
        assert composer.text == "a\nb\nc"
        composer.load_text("é" * 30)
        await pilot.press("enter")
        status = app.query_one("#status")
        assert "message too long: 60 bytes, the limit is 50 bytes" in str(status.render())
        assert "error" in status.classes
        assert not [c for c in chat.calls if c[0] == "chat.send"]
        assert composer.text == "é" * 30  # nothing lost


async def test_reply_to_selected_message_sends_reply_to_and_shows_a_quote() -> None:
    chat = scene()
    async with started(chat) as (app, pilot):
        log = app.query_one(MessageLog)
        log.focus()
        await pilot.press("up", "up", "r")
        target = log.selected_message()
        assert target is not None
        assert app.query_one("#reply-bar").display
        await pilot.press("o", "k", "enter")
        sent = [p for m, p in chat.calls if m == "chat.send"][-1]
        assert sent["reply_to"] == target.id
        await pilot.pause()
        lines = "\n".join(visible_text(log))
        assert "┃ ↪" in lines


async def test_calls_not_available_without_call_place() -> None:
    chat = scene()
    async with started(chat) as (app, pilot):
        app.query_one(Composer).load_text("/call")
        app.query_one(Composer).focus()
        await pilot.press("enter")
        assert "calls are not available" in str(app.query_one("#status").render())
        assert not [c for c in chat.calls if c[0] == "call.place"]


async def test_retry_a_failed_message_and_commands_for_qr_copy_and_palette() -> None:
    from apps.chat.tui.screens.help import HelpScreen
    from apps.chat.tui.screens.qr import QrScreen

    chat = scene()
    async with started(chat) as (app, pilot):
        log = app.query_one(MessageLog)
        failed = next(m for m in log.window.messages if m.state == "failed")
        log.focus()
        while log.selected_message() != failed:
            await pilot.press("up")
        await pilot.press("t")
        assert ("chat.retry", {"id": failed.id}) in chat.calls
        composer = app.query_one(Composer)
        composer.focus()
        composer.load_text("/qr")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, QrScreen)
        assert app.screen.address == f"{OWN}@mesh"
        await pilot.press("escape")
        composer.load_text("/copy alice")
        await pilot.press("enter")
        assert f"copied {ALICE}@mesh" in str(app.query_one("#status").render())
        app.palette_command("help")  # what the command palette runs for /help
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)


async def test_lagged_events_reload_the_open_conversation() -> None:
    chat = scene()
    async with started(chat) as (app, pilot):
        missed = message(50, ALICE, "sent while we were not listening", ts=T0 + 900)
        chat.add(missed)  # the node has it; its chat.message event was dropped
        chat.push("events.lagged", {"dropped": 3})
        log = app.query_one(MessageLog)
        for _ in range(250):
            if log.window.get(missed["id"]) is not None:
                break
            await pilot.pause(0.02)
        assert log.window.get(missed["id"]) is not None


async def test_link_in_the_selected_message_opens() -> None:
    async with started(scene()) as (app, pilot):
        opened: list[str] = []
        app.open_url = lambda url, **kw: opened.append(url)  # type: ignore[method-assign]
        log = app.query_one(MessageLog)
        log.focus()
        while log.selected_message() is None or "://" not in log.selected_message().body:  # type: ignore[union-attr]
            await pilot.press("up")
        await pilot.press("o")
        assert opened == ["https://example.org/map?x=1"]


async def test_command_palette_lists_the_slash_commands() -> None:
    from apps.chat.tui.screens.qr import QrScreen

    async with started(scene()) as (app, pilot):
        await pilot.press("ctrl+p")
        await pilot.pause()
        for ch in "/qr":
            await pilot.press(ch)
        for _ in range(100):  # the palette searches in the background
            await pilot.pause(0.02)
            await pilot.press("enter")
            if isinstance(app.screen, QrScreen):
                break
        assert isinstance(app.screen, QrScreen)
