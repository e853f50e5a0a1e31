"""Findings of the outside trial (F8 help text), each with a test that fails without it."""

from __future__ import annotations

import pytest

from apps.chat.tui.screens.help import HelpScreen

from .scripted import scene
from .test_pilot_widgets import started

pytestmark = pytest.mark.timeout(60)


async def test_help_screen_shows_command_usages_literally() -> None:
    async with started(scene()) as (app, pilot):
        await pilot.press("f1")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        shown = "\n".join(app.screen.query_one("#help-text").render_line(y).text for y in range(60))
        assert "/add KEY[@mesh] [ALIAS]" in shown
        assert "/alias [CONTACT] NAME" in shown
        assert "\\" not in shown


async def test_messages_arriving_in_the_open_conversation_do_not_count_as_unread() -> None:
    from apps.chat.tui.widgets.conversation_list import ConversationList

    from .scripted import ALICE, message

    chat = scene()
    async with started(chat) as (app, pilot):
        chat.methods.append("chat.read")
        new = message(50, ALICE, "while you look")
        chat.add(new)
        chat.unread[ALICE] = 1  # the node counts it until chat.read
        chat.push("chat.message", new)
        await pilot.pause(0.2)
        await pilot.pause()
        lst = app.query_one(ConversationList)
        shown = [str(lst.get_option_at_index(i).prompt) for i in range(lst.option_count)]
        alice = next(s for s in shown if s.startswith("● alice"))
        assert "(1)" not in alice.splitlines()[0]


async def test_at_a_small_terminal_the_list_shrinks_and_bodies_stay_visible() -> None:
    from apps.chat.tui.app import ChatApp
    from apps.chat.tui.widgets.message_log import MessageLog

    app = ChatApp(scene(), contact="alice", tz=None)
    async with app.run_test(size=(50, 15)) as pilot:
        await app.ready.wait()
        await pilot.pause()
        assert app.query_one("#sidebar").size.width <= 16
        log = app.query_one(MessageLog)
        assert log.size.width >= 30
        shown = "\n".join(log.render_line(y).text for y in range(log.size.height))
        assert "this one is" in shown and "pending ◷" in shown
