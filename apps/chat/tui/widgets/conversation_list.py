"""The conversations list: contacts by last activity, then message requests."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from ..model import Conversation, preview, sort_conversations

__all__ = ["ConversationList"]


def _prompt(conv: Conversation, warn: bool, width: int) -> Text:
    text = Text()
    text.append("● " if conv.online else "○ ", style="green" if conv.online else "grey50")
    if warn:
        text.append("⚠ ", style="bold red")
    text.append(conv.name, style="bold" if conv.unread else "")
    if conv.muted:
        text.append(" (muted)", style="grey50")
    if conv.unread:
        text.append(f" ({conv.unread})", style="bold yellow")
    if conv.last is not None:
        who = "you: " if conv.last.outgoing else ""
        text.append("\n  " + preview(who + conv.last.body, width), style="grey62")
    else:
        text.append("\n  no messages yet", style="grey50 italic")
    return text


class ConversationList(OptionList):
    """Options are conversation keys; section titles are disabled options."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.order: list[Conversation] = []

    def show(
        self, convs: Sequence[Conversation], current: str | None, warn: set[str] | None = None
    ) -> None:
        talks, requests = sort_conversations(convs)
        self.order = talks + requests
        width = max((self.size.width or 34) - 6, 16)
        options: list[Option | None] = []
        if not talks and not requests:
            options.append(
                Option(Text("no conversations yet — /add KEY@mesh", "grey50"), disabled=True)
            )
        options += [Option(_prompt(c, c.key in (warn or set()), width), id=c.key) for c in talks]
        if requests:
            options.append(
                Option(Text(f"Message requests ({len(requests)})", "bold magenta"), disabled=True)
            )
            options += [
                Option(_prompt(c, c.key in (warn or set()), width), id=c.key) for c in requests
            ]
        keep = None
        if self.has_focus and self.highlighted is not None:
            keep = self.get_option_at_index(self.highlighted).id  # the person is browsing
        self.clear_options()
        self.add_options(options)
        current = keep or current
        if current is not None:
            for index, option in enumerate(options):
                if option is not None and option.id == current:
                    self.highlighted = index
                    break
