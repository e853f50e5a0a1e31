"""Turn chat messages into terminal lines (Rich segments), one block per message.

The message log draws only these lines for the rows on screen (Textual's line API),
so a conversation costs a few strips per *held* message, never a widget per message.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, tzinfo
from functools import lru_cache

from rich.cells import cell_len, chop_cells, set_cell_size
from rich.console import Console
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.strip import Strip

from core import safe_line

from .model import MARKS, ChatMessage, find_urls, preview

__all__ = ["NAME_WIDTH", "RenderStyles", "block_height", "render_block"]

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


_STYLES = RenderStyles()


def _mark(message: ChatMessage, styles: RenderStyles) -> Text:
    if not message.outgoing:
        return Text()
    mark = MARKS.get(message.state, message.state)
    style = {
        "failed": styles.failed,
        "read": styles.read,
    }.get(message.state, styles.mark)
    return Text(f" {mark}", style=style)


@lru_cache(maxsize=4096)
def _day(ts: float, tz: tzinfo | None) -> date:
    """The calendar day of ``ts`` (cached: each message is asked about twice, as itself
    and as the next one's predecessor, and strftime was a fifth of measuring a page)."""
    return datetime.fromtimestamp(ts, tz).date()


def _new_day(message: ChatMessage, previous: ChatMessage | None, tz: tzinfo | None) -> bool:
    return previous is None or _day(previous.ts, tz) != _day(message.ts, tz)


def _mark_plain(message: ChatMessage) -> str:
    """The text of :func:`_mark`, without building a Text."""
    return f" {MARKS.get(message.state, message.state)}" if message.outgoing else ""


def _wrap_plain(text: str, width: int) -> list[str]:
    """Greedy word wrap by terminal cells; words longer than a line are folded."""
    out: list[str] = []
    for para in text.split("\n"):
        if cell_len(para) <= width:
            out.append(para)
            continue
        line, used = "", 0
        for word in para.split(" "):
            size = cell_len(word)
            if line and used + 1 + size <= width:
                line, used = f"{line} {word}", used + 1 + size
                continue
            if not line and size <= width:
                line, used = word, size
                continue
            if line:
                out.append(line)
            pieces = chop_cells(word, width) if size > width else [word]
            out.extend(pieces[:-1])
            line, used = pieces[-1], cell_len(pieces[-1])
        out.append(line)
    return out


def _plain(body: str, search: str | None) -> bool:
    """Whether the body can skip Rich: no link, no search hit, nothing to clean."""
    if "://" in body or (search and search.lower() in body.lower()):
        return False
    return body.replace("\n", "").isprintable()  # tabs, control characters: Rich cleans


def block_height(
    message: ChatMessage,
    previous: ChatMessage | None,
    *,
    width: int,
    console: Console,
    tz: tzinfo | None,
    search: str | None = None,
) -> int:
    """How many lines :func:`render_block` gives, without building them (no objects the
    collector has to track: held messages cost an int each until they are drawn)."""
    width = max(width, PREFIX + 10)
    lines = int(_new_day(message, previous, tz))
    if message.reply_to:
        lines += 1
    if message.state == "failed":
        lines += 1
    room = width - PREFIX
    if _plain(message.body, search):
        mark = _mark_plain(message)
        wrapped = _wrap_plain(message.body, room)
        over = bool(mark) and cell_len(wrapped[-1]) + cell_len(mark) > room
        return lines + len(wrapped) + int(over)
    body = _body_text(message.body, _STYLES, search)
    body.append_text(_mark(message, _STYLES))
    return lines + len(body.wrap(console, room, overflow="fold"))


def _plain_strip(text: str, style: Style | None, width: int) -> Strip:
    return Strip([Segment(set_cell_size(text, width), style)], width)


def _plain_body(
    message: ChatMessage,
    width: int,
    head: list[Segment],
    styles: RenderStyles,
    search: str | None,
) -> list[Strip] | None:
    """Body lines straight from segments, without Rich's Text (several times faster):
    for bodies with no link and no search hit, which is nearly all of them."""
    body = message.body
    if not _plain(body, search):
        return None
    mark = _mark(message, styles)
    room = width - PREFIX
    lines = _wrap_plain(body, room)
    mark_cells = cell_len(mark.plain)
    tail: list[Segment] = []
    if mark_cells:
        mark_style = mark.style if isinstance(mark.style, Style) else None
        if cell_len(lines[-1]) + mark_cells <= room:
            tail = [Segment(mark.plain, mark_style)]
        else:
            lines.append("")
            tail = [Segment(mark.plain.lstrip(), mark_style)]
            mark_cells -= 1
    strips = []
    indent = Segment(" " * PREFIX)
    last = len(lines) - 1
    for i, line in enumerate(lines):
        segments = [*head] if i == 0 else [indent]
        segments.append(Segment(line, styles.body))
        used = PREFIX + cell_len(line)
        if i == last and tail:
            segments += tail
            used += mark_cells
        segments.append(Segment(" " * max(width - used, 0)))
        strips.append(Strip(segments, width))
    return strips


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
    strips: list[Strip] = []
    if _new_day(message, previous, tz):
        label = datetime.fromtimestamp(message.ts, tz).strftime(" %A %d %B %Y ")
        strips.append(_plain_strip(label.center(width, "─"), styles.day, width))
    indent = " " * PREFIX
    if message.reply_to:
        quoted = lookup(message.reply_to)
        what = (
            f"{name_of(quoted.sender)}: {preview(quoted.body, width - PREFIX - 8)}"
            if quoted
            else "an earlier message"
        )
        strips.append(_plain_strip(f"{indent}┃ ↪ {what}", styles.quote, width))
    stamp = datetime.fromtimestamp(message.ts, tz).strftime("%H:%M ")
    name = safe_line(name_of(message.sender))[:NAME_WIDTH].ljust(NAME_WIDTH) + " "
    name_style = styles.name_out if message.outgoing else styles.name_in
    head = [Segment(stamp, styles.time), Segment(name, name_style)]
    body_strips = _plain_body(message, width, head, styles, search)
    if body_strips is None:
        body = _body_text(message.body, styles, search)
        body.append_text(_mark(message, styles))
        body_strips = []
        for i, part in enumerate(body.wrap(console, width - PREFIX, overflow="fold")):
            if i == 0:
                line = Text()
                line.append(stamp, style=styles.time)
                line.append(name, style=name_style)
            else:
                line = Text(indent)
            line.append_text(part)
            line.truncate(width, pad=True)
            body_strips.append(Strip(line.render(console), width))
    strips += body_strips
    if message.state == "failed":
        reason = safe_line(message.error or "not delivered")  # the peer's words
        strips.append(_plain_strip(f"{indent}✗ {reason} — t retries", styles.failed, width))
    if selected:
        strips = [strip.apply_style(styles.selected) for strip in strips]
    return strips
