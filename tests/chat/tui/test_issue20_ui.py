"""Issue 20 in the UI: /security counts and acknowledges records (finding 2, one bounded
page asked of the node); typing ahead sends each line once (finding 7)."""

from __future__ import annotations

from datetime import UTC

import pytest

from apps.chat.tui.app import SECURITY_PAGE, ChatApp
from apps.chat.tui.widgets.composer import Composer
from core import MeshError

from .scripted import ALICE, T0, ScriptedChat, scene

pytestmark = pytest.mark.timeout(60)


def held(app: ChatApp) -> str:
    from apps.chat.tui.widgets.message_log import MessageLog

    return "\n".join(m.body for m in app.query_one(MessageLog).window.messages)


async def test_security_command_counts_and_acknowledges() -> None:
    chat = scene()
    for i in range(3):
        chat.security.append(
            {"id": str(i + 1), "key": ALICE, "kind": "forged-sender", "detail": "x", "ts": T0 + i}
        )
    app = ChatApp(chat, contact="alice", tz=UTC)
    async with app.run_test(size=(120, 30)) as pilot:
        await app.ready.wait()
        asked = [p for m, p in chat.calls if m == "chat.security"]
        assert asked and all(p.get("limit") == SECURITY_PAGE for p in asked)
        assert asked[0].get("unacknowledged") is True
        composer = app.query_one(Composer)
        composer.focus()
        composer.load_text("/security")
        await pilot.press("enter")
        await pilot.pause()
        status = str(app.query_one("#status").render())
        assert "3 unacknowledged security record(s)" in status, status
        composer.load_text("/security ack all")
        await pilot.press("enter")
        await pilot.pause()
        assert ("chat.security.ack", {"all": True}) in chat.calls
        composer.load_text("/security ack 2")
        await pilot.press("enter")
        await pilot.pause()
        assert ("chat.security.ack", {"id": "2"}) in chat.calls


async def test_typing_ahead_sends_each_line_once_as_typed() -> None:
    """Issue 20 finding 7: while a send is in flight, what is typed is the next message."""
    chat = scene()
    chat.send_delay = 0.3
    app = ChatApp(chat, contact="alice", tz=UTC)
    async with app.run_test(size=(120, 30)) as pilot:
        await app.ready.wait()
        app.query_one(Composer).focus()
        await pilot.press("m", "1", "enter", "m", "2", "enter", "m", "3", "enter")
        for _ in range(400):  # bounded: 20 s on a loaded machine
            await pilot.pause(0.05)
            if len([c for c in chat.calls if c[0] == "chat.send"]) == 3:
                break
        sent = [p["body"] for m, p in chat.calls if m == "chat.send"]
        assert sent == ["m1", "m2", "m3"]  # was m1, m1m2, m1m2m3
        assert app.query_one(Composer).text == ""


async def test_a_flood_in_another_conversation_rings_once_and_stacks_one_toast() -> None:
    """Issue 20 finding 9 (in part): notifications are coalesced per conversation."""
    from .scripted import BOB, message

    chat = scene()
    app = ChatApp(chat, contact="alice", tz=UTC)
    async with app.run_test(size=(120, 30)) as pilot:
        await app.ready.wait()
        bells: list[int] = []
        app.bell = lambda: bells.append(1)  # type: ignore[method-assign]
        for i in range(200):
            chat.push("chat.message", message(1000 + i, BOB, f"flood {i}", ts=T0 + i))
        for _ in range(400):  # until all 200 are taken in (bounded: 20 s)
            await pilot.pause(0.05)
            if not chat._queue or chat._queue.empty():
                break
        await pilot.pause(0.2)
        assert len(bells) == 1  # was 200
        assert len(app._notifications) == 1


async def test_the_ui_reconnects_by_itself_when_the_node_comes_back() -> None:
    """Issue 20 finding 10: the node restarted; the UI reconnects and says so."""
    from .scripted import ALICE, message

    first, second = scene(), scene()
    second.add(message(500, ALICE, "said while you were away", ts=T0 + 900))
    attempts: list[int] = []

    async def again() -> ScriptedChat:
        attempts.append(1)
        if len(attempts) < 2:
            raise MeshError("no node yet")  # still restarting
        return second

    app = ChatApp(first, contact="alice", tz=UTC, reconnect=again)
    async with app.run_test(size=(120, 30)) as pilot:
        await app.ready.wait()
        first.hang_up()
        for _ in range(400):  # bounded: 20 s on a loaded machine
            await pilot.pause(0.05)
            if app.client is second and "said while you were away" in held(app):
                break
        assert app.client is second and len(attempts) == 2
        assert "said while you were away" in held(app)
        assert "reconnected" in str(app.query_one("#status").render())


async def test_block_hides_the_request_bar_and_the_header_fits_120_columns() -> None:
    """Issue 20 finding 11 (two of them): after /block the request bar goes; at 120
    columns the header's address is not cut (the key's start and end are shown)."""
    from apps.chat.tui.widgets.banner import RequestBar

    from .scripted import MALLORY

    chat = scene()
    app = ChatApp(chat, contact=MALLORY, tz=UTC)
    async with app.run_test(size=(120, 30)) as pilot:
        await app.ready.wait()
        await pilot.pause()
        assert app.query_one(RequestBar).display
        header = app.query_one("#header").render_line(0).text.rstrip()
        assert header.endswith("@mesh"), header
        composer = app.query_one(Composer)
        composer.focus()
        composer.load_text("/block")
        await pilot.press("enter")
        await pilot.pause()
        assert not app.query_one(RequestBar).display
