"""The help screen: every key and every `/` command."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from ..model import COMMANDS

__all__ = ["KEYS", "HelpScreen"]

KEYS: list[tuple[str, str]] = [
    ("enter", "send the message (or run a / command)"),
    (
        "ctrl+j",
        "new line in the message (also shift+enter or alt+enter where the terminal reports them)",
    ),
    ("up / down", "input history (on the first / last line)"),
    ("ctrl+a / ctrl+e", "start / end of line"),
    ("ctrl+k / ctrl+u", "delete to end / start of line"),
    ("ctrl+w", "delete the word before the cursor"),
    ("alt+b / alt+f", "word left / right"),
    ("alt+n", "next conversation with unread messages"),
    ("alt+up / alt+down", "previous / next conversation"),
    ("tab / shift+tab", "move between the list, the messages and the input"),
    ("ctrl+f", "search this conversation"),
    ("f3 / shift+f3", "next / previous search hit"),
    ("escape", "close search, cancel a reply, go to the messages"),
    ("messages: up / down", "select a message"),
    ("messages: r", "reply to the selected message"),
    ("messages: t", "retry the selected failed message"),
    ("messages: o", "open the link in the selected message"),
    ("messages: y", "copy the selected message's text"),
    ("pageup / pagedown", "scroll (older pages load as you go)"),
    ("ctrl+p", "command palette"),
    ("f1", "this help"),
    ("ctrl+q", "quit (the node keeps running)"),
]


def help_text() -> Text:
    """Built from styled pieces, not markup: usages such as `KEY[@mesh] [ALIAS]` are
    shown literally (markup would take `[ALIAS]` for a tag)."""
    text = Text()

    def line(*parts: tuple[str, str]) -> None:
        for part, style in parts:
            text.append(part, style=style)
        text.append("\n")

    width = max(len(k) for k, _ in KEYS) + 2
    line(("Keys", "bold"))
    line()
    for k, what in KEYS:
        line(("  " + k.ljust(width), "bold"), (what, ""))
    line()
    line(("Commands", "bold"))
    line()
    cwidth = max(len(c.usage) for c in COMMANDS.values()) + 2
    for c in COMMANDS.values():
        line(("  " + c.usage.ljust(cwidth), "bold"), (c.help, ""))
    line()
    line(
        ("Delivery marks", "bold"),
        ("  ◷ pending   ✓ sent   ✓✓ delivered   ✓✓ read (blue)   ✗ failed", ""),
    )
    line()
    text.append("escape or q closes this screen", style="dim")
    return text


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,f1", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Static(help_text(), id="help-text")
