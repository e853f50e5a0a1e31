"""Snapshots (pytest-textual-snapshot) at 110x32, fixed keys, clock and time zone (UTC).

The data comes from the scripted chat API (tests/chat/tui/scripted.py), so every
delivery mark and a security record can be shown exactly; update with
``pytest tests/chat/tui/test_snapshots.py --snapshot-update`` after checking the SVGs.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC
from typing import Any

from textual.pilot import Pilot

from apps.chat.tui.app import ChatApp

from .scripted import ALICE, T0, ScriptedChat, scene

SIZE = (110, 32)


def app_for(chat: ScriptedChat, contact: str | None = "alice") -> ChatApp:
    return ChatApp(chat, contact=contact, tz=UTC, clock=lambda: T0 + 400)


async def settled(pilot: Pilot[Any]) -> None:
    app = pilot.app
    assert isinstance(app, ChatApp)
    await app.ready.wait()
    # A blinking cursor is drawn or not depending on when the shot lands (a loaded machine
    # lands it in the off phase): held steady, it is always drawn.
    for widget in app.query("*"):
        if hasattr(widget, "cursor_blink"):
            widget.cursor_blink = False
    await pilot.pause()
    await pilot.pause()


def test_conversation_list_snapshot(snap_compare: Callable[..., bool]) -> None:
    async def focus_list(pilot: Pilot[Any]) -> None:
        await settled(pilot)
        pilot.app.query_one("#conversations").focus()
        await pilot.pause()

    assert snap_compare(app_for(scene()), terminal_size=SIZE, run_before=focus_list)


def test_conversation_with_every_delivery_mark_snapshot(snap_compare: Callable[..., bool]) -> None:
    assert snap_compare(app_for(scene()), terminal_size=SIZE, run_before=settled)


def test_help_screen_snapshot(snap_compare: Callable[..., bool]) -> None:
    async def open_help(pilot: Pilot[Any]) -> None:
        await settled(pilot)
        await pilot.press("f1")
        await pilot.pause()

    assert snap_compare(app_for(scene()), terminal_size=SIZE, run_before=open_help)


def test_key_change_banner_snapshot(snap_compare: Callable[..., bool]) -> None:
    chat = scene()
    chat.security.append(
        {
            "id": "sec1",
            "key": ALICE,
            "kind": "key-changed",
            "detail": "pinned 5f2e…91ab, offered 0c77…e410",
            "ts": T0 + 200,
            "acknowledged": False,
        }
    )
    assert snap_compare(app_for(chat), terminal_size=SIZE, run_before=settled)
