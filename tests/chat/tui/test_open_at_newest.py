"""Trial finding F7: a long conversation opens with its newest message at the bottom
of the view, whatever the terminal size, opened straight (`mesh chat CONTACT`) or from
the conversation list, and when its first page arrives after the view has mounted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

from apps.chat.tui.app import ChatApp
from apps.chat.tui.widgets.conversation_list import ConversationList
from apps.chat.tui.widgets.message_log import MessageLog

from .scripted import ALICE, BOB, T0, ScriptedChat, message

pytestmark = pytest.mark.timeout(120)
NEWEST = "the newest one"  # short: one line even at the narrowest width


def long_conversation(count: int) -> ScriptedChat:
    chat = ScriptedChat()
    chat.contact(ALICE, "alice")
    chat.contact(BOB, "bob")
    for seq in range(1, count):
        chat.add(message(seq, ALICE, f"message number {seq}", out=seq % 3 == 0, ts=T0 + seq))
    chat.add(message(count, ALICE, NEWEST, ts=T0 + count))
    chat.add(message(count + 1, BOB, "bob is newer", ts=T0 + count + 5))  # the list's first
    return chat


class Gated:
    """The scripted API whose chat.history replies wait for ``release()``: the page
    arrives after the app has mounted and drawn an empty view."""

    def __init__(self, chat: ScriptedChat) -> None:
        self.chat = chat
        self._gate = asyncio.Event()

    def release(self) -> None:
        self._gate.set()

    async def call(self, method: str, **params: Any) -> Any:
        if method == "chat.history":
            await self._gate.wait()
        return await self.chat.call(method, **params)

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        return await self.chat.subscribe()

    async def close(self) -> None:
        pass


def assert_newest_at_the_bottom(app: ChatApp) -> None:
    log = app.query_one(MessageLog)
    assert log.max_scroll_y > 0, "the conversation should be longer than the view"
    assert log.scroll_y == log.max_scroll_y, f"at {log.scroll_y} of {log.max_scroll_y}"
    shown = [log.render_line(y).text for y in range(log.scrollable_content_region.height)]
    assert NEWEST in shown[-1], shown[-3:]
    assert not log.show_horizontal_scrollbar  # it would hide the last line


SIZES = [(200, 60), (110, 32), (80, 24), (50, 15)]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
async def test_long_conversation_opened_straight_shows_the_newest_message_at_the_bottom(
    size: tuple[int, int],
) -> None:
    app = ChatApp(long_conversation(500), contact="alice", tz=UTC)
    async with app.run_test(size=size) as pilot:
        await app.ready.wait()
        await pilot.pause()
        assert_newest_at_the_bottom(app)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
async def test_long_conversation_whose_page_arrives_after_mount_opens_at_the_newest(
    size: tuple[int, int],
) -> None:
    backend = Gated(long_conversation(500))
    app = ChatApp(backend, contact="alice", tz=UTC)
    async with app.run_test(size=size) as pilot:
        await pilot.pause()  # mounted and drawn, still waiting for the page
        assert not app.query_one(MessageLog).window.messages
        backend.release()
        await pilot.pause()  # the page lands while the app keeps drawing
        await app.ready.wait()
        await pilot.pause(0.1)
        assert_newest_at_the_bottom(app)


@pytest.mark.parametrize("size", [(200, 60), (80, 24)], ids=lambda s: f"{s[0]}x{s[1]}")
async def test_long_conversation_picked_from_the_list_opens_at_the_newest(
    size: tuple[int, int],
) -> None:
    app = ChatApp(long_conversation(500), tz=UTC)  # opens bob, the newest activity
    async with app.run_test(size=size) as pilot:
        await app.ready.wait()
        assert app.current == BOB
        conversations = app.query_one(ConversationList)
        conversations.focus()
        index = next(
            i
            for i in range(conversations.option_count)
            if conversations.get_option_at_index(i).id == ALICE
        )
        conversations.highlighted = index
        await pilot.press("enter")
        for _ in range(100):
            if app.current == ALICE and app.query_one(MessageLog).window.messages:
                break
            await pilot.pause(0.02)
        await pilot.pause()
        assert_newest_at_the_bottom(app)


async def test_100000_message_conversation_opens_at_the_newest() -> None:
    backend = Gated(long_conversation(100_000))
    app = ChatApp(backend, contact="alice", tz=UTC)
    async with app.run_test(size=(200, 60)) as pilot:
        await pilot.pause()
        backend.release()
        await app.ready.wait()
        await pilot.pause()
        assert_newest_at_the_bottom(app)
        assert app.query_one(MessageLog).window.more_older


@pytest.mark.slow
async def test_long_conversation_on_a_real_node_opens_at_the_newest(tmp_path: Path) -> None:
    from .nodes import chat_nodes

    async with chat_nodes(tmp_path, 2) as (a, b):
        await a.call("chat.accept", contact=b.key)  # more than a stranger's request
        for i in range(299):
            await b.call("chat.send", contact=a.key, body=f"message number {i}")
        await b.call("chat.send", contact=a.key, body=NEWEST)

        async def arrived() -> bool:
            result = await a.call("chat.history", contact=b.key, limit=1)
            return bool(result["messages"]) and result["messages"][-1]["body"] == NEWEST

        from .nodes import eventually

        await eventually("300 messages at the receiving node", arrived, timeout=60)
        app = ChatApp(a.client, contact=b.key, tz=UTC)
        async with app.run_test(size=(200, 60)) as pilot:
            await app.ready.wait()
            await pilot.pause()
            assert_newest_at_the_bottom(app)
