"""Issue 20 finding 1: text another node controls reaches the terminal only through the
one sanitizer (core.text), in every place the UI draws it: bodies, the failure line (the
peer's refusal reason), names, previews in the list, search hits, reply quotes, the
security banner, toasts, call names and the status line."""

from __future__ import annotations

import unicodedata
from datetime import UTC

import pytest

from apps.chat.tui.app import ChatApp
from apps.chat.tui.widgets.message_log import MessageLog

from .scripted import ALICE, BOB, MALLORY, T0, ScriptedChat, message

pytestmark = pytest.mark.timeout(60)

# One of each class: C0 (NUL, BEL, BS, CR), ESC sequences (OSC title, clear screen,
# colour), DEL, C1 (CSI, OSC), bidi override/embedding/isolate/marks, zero-width
# space/non-joiner/joiner, word joiner, BOM, soft hyphen, separators, Hangul fillers, tag.
HOSTILE = (
    "\x00\x07\x08\r\x1b]0;TITLE\x07\x1b[2J\x1b[31mPAINT\x7f\x9b31m\x9d0;t\x07"
    "\u202e\u202a\u2066\u2069\u200e\u200f\u061c\u200b\u200c\u200d\u2060\ufeff"
    "\u00ad\u2028\u2029\u3164\u115f\U000e0041"
)
INVISIBLE = {"\u3164", "\u115f"}


def _unsafe(char: str) -> bool:
    """A character that drives or fools a terminal (the screen's own lines are joined
    with newlines here, so those are not counted)."""
    category = unicodedata.category(char)
    return char != "\n" and (char in INVISIBLE or category in ("Cc", "Cf", "Zl", "Zp", "Cs"))


def screen_text(app: ChatApp) -> str:
    strips = app.screen._compositor.render_strips()
    return "\n".join("".join(seg.text for seg in strip) for strip in strips)


def hostile_scene() -> ScriptedChat:
    chat = ScriptedChat()
    chat.contact(ALICE, f"al{HOSTILE}ice")  # an alias that got past the node somehow
    chat.contact(BOB, f"bob{HOSTILE}")
    chat.contact(MALLORY, None, request=True)
    chat.add(message(1, ALICE, f"body {HOSTILE} needle end", ts=T0))
    chat.add(message(2, ALICE, "mine", out=True, state="failed", ts=T0 + 60, error=f"no {HOSTILE}"))
    chat.add(message(3, ALICE, "quoting", reply_to=f"{1:032x}", ts=T0 + 120))
    chat.add(message(4, ALICE, "to be refused", out=True, state="sent", ts=T0 + 180))
    chat.add(message(5, MALLORY, f"request {HOSTILE} preview", ts=T0 + 30))
    chat.add(message(6, BOB, f"bob says {HOSTILE}", ts=T0 - 30))
    chat.security.append(
        {"id": "1", "key": ALICE, "kind": f"forged{HOSTILE}", "detail": HOSTILE, "ts": T0}
    )
    return chat


async def test_remote_text_is_drawn_escaped_everywhere() -> None:
    chat = hostile_scene()
    app = ChatApp(chat, contact=ALICE, tz=UTC)
    async with app.run_test(size=(120, 40)) as pilot:
        await app.ready.wait()
        await pilot.pause()
        # live: a refusal reason for a sent message (the reported failure line), a message
        # in another conversation (toast), a request, a call, a typing notice
        chat.push(
            "chat.state",
            {"id": f"{4:032x}", "conversation": ALICE, "state": "failed", "error": HOSTILE},
        )
        chat.push("chat.message", message(7, BOB, f"toast {HOSTILE}", ts=T0 + 240))
        chat.push("chat.request", {"key": f"{MALLORY[:20]}{HOSTILE}"})
        chat.push("call.incoming", {"id": "c1", "peer": f"{BOB[:20]}{HOSTILE}"})
        await pilot.pause(0.3)
        await pilot.pause()
        shown = screen_text(app)
        assert "PAINT" in shown and "needle" in shown and "TITLE" in shown
        assert "\\x1b]0;TITLE\\x07" in shown  # escaped where it was, readable
        bad = sorted({f"U+{ord(c):04X}" for c in shown if _unsafe(c)})
        assert bad == []
        # a search hit (drawn by Rich with a highlight) and a reply bar quoting it
        await app.search("needle")
        await pilot.pause()
        log = app.query_one(MessageLog)
        assert log.window.get(f"{1:032x}") is not None
        app.reply_to = log.window.get(f"{1:032x}")
        app._update_bars()
        await pilot.pause()
        shown = screen_text(app)
        assert "needle" in shown
        assert sorted({f"U+{ord(c):04X}" for c in shown if _unsafe(c)}) == []
        # the request conversation: its body and the list's preview
        await app.open_conversation(MALLORY)
        await pilot.pause()
        shown = screen_text(app)
        assert "request" in shown
        assert sorted({f"U+{ord(c):04X}" for c in shown if _unsafe(c)}) == []
