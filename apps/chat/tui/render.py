"""Turn chat messages into terminal lines (Rich segments), one block per message.

The message log draws only these lines for the rows on screen (Textual's line API),
so a conversation costs a few strips per *held* message, never a widget per message.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, tzinfo

from rich.console import Console
from rich.style import Style
from rich.text import Text
from textual.strip import Strip

from .model import MARKS, ChatMessage, day_of, find_urls, preview

__all__ = ["NAME_WIDTH", "RenderStyles", "render_block"]

NAME_WIDTH = 12
PREFIX = 6 + NAME_WIDTH + 1  # "HH:MM " + name + " "


class RenderStyles:
    """The log's colours (class attributes: one shared, immutable set)."""

    time = Style(color="grey58")
    name_in = Style(color="cyan", bold=True)
    name_out = Style(color="green", bold=True)
    body = Style()
    mark = Style(color="grey58")
    read = Style(color="blue")
    failed = Style(color="red", bold=True)
    quote = Style(color="grey50", italic=True)
    url = Style(color="bright_blue", underline=True)
    day = Style(color="yellow", dim=True)
    hit = Style(color="black", bgcolor="yellow")
    selected = Style(bgcolor="grey23")


def _mark(message: ChatMessage, styles: RenderStyles) -> Text:
    if not message.outgoing:
        return Text()
    mark = MARKS.get(message.state, message.state)
    style = {
        "failed": styles.failed,
        "read": styles.read,
    }.get(message.state, styles.mark)
    return Text(f" {mark}", style=style)


def _body_text(body: str, styles: RenderStyles, search: str | None) -> Text:
    text = Text(body, style=styles.body)
    for start, end in find_urls(body):
        url = body[start:end]
        text.stylize(styles.url + Style(link=url), start, end)
    if search:
        text.highlight_words([search], styles.hit, case_sensitive=False)
    return text


def render_block(
    message: ChatMessage,
    previous: ChatMessage | None,
    *,
    width: int,
    console: Console,
    tz: tzinfo | None,
    name_of: Callable[[str], str],
    lookup: Callable[[str], ChatMessage | None],
    styles: RenderStyles,
    search: str | None = None,
    selected: bool = False,
) -> list[Strip]:
    """The lines of one message: an optional day separator, an optional reply quote,
    the wrapped body with time, sender and delivery mark, and a failure line."""
    width = max(width, PREFIX + 10)
    lines: list[Text] = []
    day = day_of(message.ts, tz)
    if previous is None or day_of(previous.ts, tz) != day:
        label = datetime.fromtimestamp(message.ts, tz).strftime(" %A %d %B %Y ")
        lines.append(Text(label.center(width, "─"), style=styles.day))
    indent = " " * PREFIX
    if message.reply_to:
        quoted = lookup(message.reply_to)
        what = (
            f"{name_of(quoted.sender)}: {preview(quoted.body, width - PREFIX - 8)}"
            if quoted
            else "an earlier message"
        )
        lines.append(Text(f"{indent}┃ ↪ {what}", style=styles.quote))
    body = _body_text(message.body, styles, search)
    body.append_text(_mark(message, styles))
    wrapped = body.wrap(console, width - PREFIX, overflow="fold")
    stamp = datetime.fromtimestamp(message.ts, tz).strftime("%H:%M ")
    name = name_of(message.sender)[:NAME_WIDTH].ljust(NAME_WIDTH) + " "
    for i, part in enumerate(wrapped):
        if i == 0:
            line = Text()
            line.append(stamp, style=styles.time)
            line.append(name, style=styles.name_out if message.outgoing else styles.name_in)
        else:
            line = Text(indent)
        line.append_text(part)
        lines.append(line)
    if message.state == "failed":
        reason = message.error or "not delivered"
        lines.append(Text(f"{indent}✗ {reason} — t retries", style=styles.failed))
    strips = []
    for line in lines:
        line.truncate(width, pad=True)
        strip = Strip(line.render(console), width)
        if selected:
            strip = strip.apply_style(styles.selected)
        strips.append(strip)
    return strips
