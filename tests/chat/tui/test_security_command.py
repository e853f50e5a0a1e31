"""Issue 20 finding 2 in the UI: /security counts the records, /security ack all (or an
id, or a contact) acknowledges them; the UI asks the node for one bounded page only."""

from __future__ import annotations

from datetime import UTC

import pytest

from apps.chat.tui.app import SECURITY_PAGE, ChatApp
from apps.chat.tui.widgets.composer import Composer

from .scripted import ALICE, T0, scene

pytestmark = pytest.mark.timeout(60)


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
