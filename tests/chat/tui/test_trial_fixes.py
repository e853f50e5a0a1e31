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
