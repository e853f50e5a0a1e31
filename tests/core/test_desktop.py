"""Desktop notifications over a real session D-Bus (a private dbus-daemon) to a
freedesktop notification server: shown with its buttons and ringtone hint, a peer's
text unable to drive it, a pressed button calls back once, withdrawn on request, and
nothing at all (no error) without a session bus."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from core.desktop import DesktopNotifier
from tests.core.dbus_session import session_bus


async def test_a_notification_is_shown_pressed_and_withdrawn(tmp_path: Path) -> None:
    async with session_bus(tmp_path) as desk:
        notifier = DesktopNotifier("mesh call")
        pressed: list[str] = []
        try:
            ident = await notifier.notify(
                "Incoming call",
                'ana <a href="http://x">click</a> & \x1b[31mred\u202e',
                actions=[("accept", "Accept"), ("reject", "Reject")],
                on_action=pressed.append,
                sound="phone-incoming-call",
                urgent=True,
            )
            assert ident == 1
            shown = desk.shown[0]
            assert shown["app"] == "mesh call" and shown["summary"] == "Incoming call"
            assert shown["actions"] == ["accept", "Accept", "reject", "Reject"]
            assert shown["hints"]["sound-name"] == ("s", "phone-incoming-call")
            assert shown["hints"]["urgency"] == ("y", 2)
            body = shown["body"]
            assert "<a" not in body and "&lt;a href" in body and "&amp;" in body
            assert "\x1b" not in body and "\u202e" not in body
            await desk.press(ident, "reject")
            await desk.press(ident, "reject")  # a second press: nothing more
            for _ in range(200):  # the signal's round trip through the bus
                if pressed:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)
            assert pressed == ["reject"]
            second = await notifier.notify("Incoming call", "bob")
            await notifier.withdraw(second)
            await desk.wait(lambda: desk.closed == [second])
        finally:
            await notifier.close()


async def test_without_a_session_bus_nothing_is_shown_and_nothing_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    notifier = DesktopNotifier()
    assert await notifier.notify("Incoming call", "ana") is None
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", f"unix:path={tmp_path / 'nothing'}")
    assert await notifier.notify("Incoming call", "ana") is None  # no bus there
    await notifier.close()
    assert os.environ["DBUS_SESSION_BUS_ADDRESS"].endswith("nothing")
