"""The message input: Enter sends, ctrl+j / alt+enter insert a newline, readline keys,
history on up/down (on the first/last line), pasted text keeps its lines."""

from __future__ import annotations

from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea

from ..model import InputHistory

__all__ = ["Composer"]

NEWLINE_KEYS = ("ctrl+j", "newline", "shift+enter", "alt+enter")
OWN_ALT_KEYS = ("alt+b", "alt+f")  # readline word moves, bound below


class Composer(TextArea):
    BINDINGS = [
        Binding("ctrl+j,alt+enter,shift+enter", "newline", "Newline", show=False),
        Binding("alt+b", "cursor_word_left", "Word left", show=False),
        Binding("alt+f", "cursor_word_right", "Word right", show=False),
        Binding("ctrl+k", "delete_to_end_of_line", "Delete to end", show=False),
        Binding("ctrl+u", "kill_to_start", "Delete to start", show=False),
        Binding("ctrl+w", "delete_word_left", "Delete word", show=False),
        Binding("up", "history_or_up", "History", show=False),
        Binding("down", "history_or_down", "History", show=False),
    ]

    class Submitted(Message):
        def __init__(self, composer: Composer, text: str) -> None:
            super().__init__()
            self.composer = composer
            self.text = text

    class Typing(Message):
        """The person typed (for typing indicators)."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, soft_wrap=True, show_line_numbers=False, tab_behavior="focus")
        self.sent_history = InputHistory()
        self.placeholder = "Message — Enter sends, ctrl+j newline, / for commands"

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            # The text leaves the input at once: what is typed while it is being sent
            # is the next message, never appended to this one (typing ahead).
            text = self.text
            self.load_text("")
            self.post_message(self.Submitted(self, text))
            return
        if event.key in NEWLINE_KEYS:
            # A real terminal (tmux) reports ctrl+j as the character "\n", which the
            # text area would not insert and the binding never saw.
            event.stop()
            event.prevent_default()
            self.action_newline()
            return
        if event.key.startswith("alt+") and event.key not in OWN_ALT_KEYS:
            # alt+LETTER is a command (alt+n: next unread), not the letter: let it
            # reach the app's bindings instead of typing the letter (prevent_default:
            # the text area's own key handler, which would insert it, does not run).
            event.prevent_default()
            return
        await super()._on_key(event)

    def action_newline(self) -> None:
        start, end = self.selection
        self._replace_via_keyboard("\n", start, end)

    def action_kill_to_start(self) -> None:
        """readline's ctrl+u: delete back to the line start (nothing at column 0)."""
        if self.cursor_location[1] > 0:
            self.action_delete_to_start_of_line()

    def action_history_or_up(self) -> None:
        row, _ = self.cursor_location
        if row == 0:
            entry = self.sent_history.older(self.text)
            if entry is not None:
                self._set(entry)
                return
        self.action_cursor_up()

    def action_history_or_down(self) -> None:
        row, _ = self.cursor_location
        if row == self.document.line_count - 1:
            entry = self.sent_history.newer()
            if entry is not None:
                self._set(entry)
                return
        self.action_cursor_down()

    def _set(self, text: str) -> None:
        self.load_text(text)
        self.move_cursor(self.document.end)

    def sent(self, text: str) -> None:
        """The text was accepted: remember it (the input was cleared on Enter)."""
        self.sent_history.add(text)

    def restore(self, text: str) -> None:
        """The text was not sent: back into the input if nothing was typed since,
        else into the history (up brings it back); never lost, never merged."""
        if not self.text:
            self._set(text)
        else:
            self.sent_history.add(text)

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        if event.text_area is self and self.text:
            self.post_message(self.Typing())
