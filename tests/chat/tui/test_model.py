"""The UI's pure state: the paged message window, conversations, input history, commands."""

from __future__ import annotations

from datetime import UTC

import pytest

from apps.chat.tui.model import (
    ChatMessage,
    Conversation,
    InputHistory,
    MessageWindow,
    body_refusal,
    day_of,
    find_urls,
    next_unread,
    parse_command,
    preview,
    short_key,
    sort_conversations,
)
from apps.chat.tui.screens.qr import qr_lines

from .scripted import ALICE, BOB, MALLORY, T0, message


def msgs(seqs: range | list[int], conv: str = ALICE) -> list[ChatMessage]:
    return [ChatMessage.from_json(message(s, conv, f"m{s}")) for s in seqs]


def test_window_pages_back_with_keyset_cursor() -> None:
    w = MessageWindow(page_size=3, max_pages=10)
    w.reset(msgs(range(7, 10)), more=True)
    assert w.older_cursor() == 7
    added, dropped = w.prepend(msgs(range(4, 7)), more=True)
    assert (added, dropped) == (3, 0)
    assert [m.seq for m in w.messages] == list(range(4, 10))
    w.prepend(msgs(range(1, 4)), more=False)
    assert w.older_cursor() is None


def test_window_never_holds_more_than_max_pages_and_reloads_dropped_newest() -> None:
    w = MessageWindow(page_size=10, max_pages=2)
    w.reset(msgs(range(21, 31)), more=True)
    w.prepend(msgs(range(11, 21)), more=True)
    added, dropped = w.prepend(msgs(range(1, 11)), more=False)
    assert (added, dropped) == (10, 10)
    assert [m.seq for m in w.messages] == list(range(1, 21))
    assert not w.at_live_end
    # Scrolling back down asks for exactly the dropped page.
    assert w.newer_request() == (31, 10)
    added, dropped = w.append_newer(msgs(range(21, 31)))
    assert (added, dropped) == (10, 10)
    assert [m.seq for m in w.messages] == list(range(11, 31))
    assert w.at_live_end and w.older_cursor() == 11


def test_live_message_counted_not_appended_while_window_is_scrolled_away() -> None:
    w = MessageWindow(page_size=5, max_pages=1)
    w.reset(msgs(range(6, 11)), more=True)
    w.prepend(msgs(range(1, 6)), more=False)
    assert not w.add_live(msgs([11])[0])
    assert w.unseen_below == 1
    w.append_newer(msgs(range(6, 11)))
    assert w.unseen_below == 0


def test_live_duplicate_updates_in_place_and_state_events_apply() -> None:
    w = MessageWindow()
    w.reset(msgs([1, 2]), more=False)
    assert w.add_live(msgs([3])[0])
    assert not w.add_live(msgs([3])[0])
    assert len(w.messages) == 3
    assert w.set_state(f"{3:032x}", "read", None) == 2
    assert w.messages[2].state == "read"
    assert w.set_state("f" * 32, "read", None) is None


def test_live_messages_keep_the_window_bounded() -> None:
    w = MessageWindow(page_size=10, max_pages=2)
    w.reset(msgs(range(1, 11)), more=False)
    for s in range(11, 200):
        w.add_live(msgs([s])[0])
    assert len(w.messages) <= 30
    assert w.messages[-1].seq == 199 and w.more_older


def test_message_from_node_is_validated() -> None:
    with pytest.raises(ValueError, match="malformed chat message"):
        ChatMessage.from_json({"id": "x"})


def test_conversations_sorted_by_activity_with_requests_apart() -> None:
    def conv(key: str, ts: float | None, *, request: bool = False, unread: int = 0) -> Conversation:
        last = message(1, key, "x", ts=ts) if ts is not None else None
        return Conversation.from_json(
            {"key": key, "alias": None, "unread": unread, "request": request, "last": last}
        )

    talks, requests = sort_conversations(
        [conv(ALICE, T0), conv(BOB, T0 + 5, unread=2), conv(MALLORY, T0 + 9, request=True)]
    )
    assert [c.key for c in talks] == [BOB, ALICE]
    assert [c.key for c in requests] == [MALLORY]
    order = talks + requests
    assert next_unread(order, BOB) is None
    assert next_unread(order, ALICE) is not None and next_unread(order, ALICE).key == BOB  # type: ignore[union-attr]


def test_input_history_browses_and_restores_the_draft() -> None:
    h = InputHistory()
    h.add("one")
    h.add("two")
    assert h.older("draft") == "two"
    assert h.older("two") == "one"
    assert h.older("one") is None
    assert h.newer() == "two"
    assert h.newer() == "draft"
    assert h.newer() is None


def test_commands_parse_with_usage_errors() -> None:
    assert parse_command("/add " + ALICE + "@mesh alice").args == (ALICE + "@mesh", "alice")
    assert parse_command("/search two words").args == ("two words",)
    with pytest.raises(ValueError, match="usage: /add"):
        parse_command("/add")
    with pytest.raises(ValueError, match="unknown command /nope"):
        parse_command("/nope")


def test_over_limit_body_refused_with_the_reason() -> None:
    assert body_refusal("héllo", 10) is None
    assert body_refusal("é" * 6, 10) == "message too long: 12 bytes, the limit is 10 bytes"
    assert body_refusal("  \n", 10) == "nothing to send"


def test_text_helpers() -> None:
    text = "see https://example.org/a?b=1. and http://x.y/z)"
    assert [text[a:b] for a, b in find_urls(text)] == ["https://example.org/a?b=1", "http://x.y/z"]
    assert preview("a\nb   c", 10) == "a b c"
    assert preview("x" * 20, 10) == "x" * 9 + "…"
    assert short_key(ALICE) == "b2b2b2b2…b2b2"
    assert day_of(T0, UTC) == "2025-12-03"


def test_qr_code_is_square_half_blocks() -> None:
    lines = qr_lines(ALICE + "@mesh")
    assert len({len(line) for line in lines}) == 1
    assert abs(len(lines[0]) - 2 * len(lines)) <= 1
    assert set("".join(lines)) <= set("█▀▄ ")
