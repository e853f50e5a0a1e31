"""Message blocks: the height the log reserves is exactly the lines drawn, for any body."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from apps.chat.tui.model import ChatMessage
from apps.chat.tui.render import PREFIX, RenderStyles, block_height, render_block

from .scripted import ALICE, T0, message

CONSOLE = Console(width=120, color_system="truecolor", force_terminal=True)
BASE = ChatMessage.from_json(message(7, ALICE, "x", out=True, state="delivered", ts=T0))
PREVIOUS = ChatMessage.from_json(message(6, ALICE, "before", ts=T0 - 86400))

bodies = st.lists(
    st.sampled_from([*"ab cd\n\t.:/!é漢字😀", "https://example.org/x", "  ", "w" * 70]),
    min_size=1,
    max_size=80,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(
    body=bodies,
    width=st.integers(min_value=PREFIX + 10, max_value=140),
    state=st.sampled_from(["pending", "sent", "delivered", "read", "failed", "received"]),
    out=st.booleans(),
    reply=st.booleans(),
    new_day=st.booleans(),
    search=st.sampled_from([None, "ab", "漢"]),
)
def test_height_matches_the_lines_drawn(
    body: str,
    width: int,
    state: str,
    out: bool,
    reply: bool,
    new_day: bool,
    search: str | None,
) -> None:
    msg = replace(
        BASE,
        body=body,
        state=state,
        direction="out" if out else "in",
        reply_to=f"{6:032x}" if reply else None,
        error="expired" if state == "failed" else None,
    )
    previous = None if new_day else replace(PREVIOUS, ts=T0 - 60)
    strips = render_block(
        msg,
        previous,
        width=width,
        console=CONSOLE,
        tz=UTC,
        name_of=lambda k: "alice",
        lookup=lambda i: PREVIOUS,
        styles=RenderStyles(),
        search=search,
    )
    height = block_height(msg, previous, width=width, console=CONSOLE, tz=UTC, search=search)
    assert height == len(strips)
    assert all(s.cell_length == width for s in strips)
