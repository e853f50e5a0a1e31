"""The conversation view: a virtual scroll over a :class:`MessageWindow`.

Only the visible rows are drawn (``render_line``); each held message is cached as a
few strips. Scrolling near the top fetches the next older page (keyset ``before_seq``),
near the bottom of a trimmed window the newer one, through the ``fetch`` callable the
app gives (one worker per direction, no message hops); when a page lands the scroll
position is shifted by its height, so nothing on screen moves.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import tzinfo
from itertools import accumulate

from rich.style import Style
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from ..model import ChatMessage, MessageWindow, find_urls
from ..render import RenderStyles, block_height, render_block

__all__ = ["Fetch", "MessageLog"]

STRIP_CACHE = 400  # drawn message blocks kept (a few screens' worth)
PREFETCH_SCREENS = 4  # the next page is asked for this many screens before the edge

# fetch(before_seq, limit) -> (messages oldest first, more older ones exist), or None
# when the conversation changed meanwhile.
Fetch = Callable[[int, int], Awaitable[tuple[list[ChatMessage], bool] | None]]


class MessageLog(ScrollView, can_focus=True):
    BINDINGS = [
        Binding("up", "select(-1)", "Previous message", show=False),
        Binding("down", "select(1)", "Next message", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "scroll_top", "Oldest loaded", show=False),
        Binding("end", "scroll_bottom", "Newest", show=False),
        Binding("r", "reply", "Reply"),
        Binding("t", "retry", "Retry failed"),
        Binding("o", "open_url", "Open URL"),
        Binding("y", "copy_message", "Copy text"),
    ]

    class Latest(Message):
        """The person asked for the newest messages while the window is scrolled away."""

    class Reply(Message):
        def __init__(self, message: ChatMessage) -> None:
            super().__init__()
            self.message = message

    class Retry(Message):
        def __init__(self, message: ChatMessage) -> None:
            super().__init__()
            self.message = message

    def __init__(
        self,
        *,
        tz: tzinfo | None,
        name_of: Callable[[str], str],
        fetch: Fetch,
        page_size: int = 200,
        id: str | None = None,
    ) -> None:
        super().__init__(id=id)
        self.window = MessageWindow(page_size=page_size, max_pages=20)
        self._tz = tz
        self._name_of = name_of
        self._styles = RenderStyles()
        self._heights: list[int] = []  # lines of each held message's block
        self._offsets: list[int] = [0]  # _offsets[i] = first line of block i
        self._strips: OrderedDict[str, list[Strip]] = OrderedDict()  # drawn blocks, LRU
        self._width = 0
        self.search: str | None = None
        self.selected: int | None = None
        self._fetch = fetch
        self._generation = 0  # bumped by show(): a page for an earlier view is dropped
        self._loading_older = False
        self._loading_newer = False
        self._follow = True  # stay at the newest line (until the person scrolls up)
        self.renders = 0  # blocks rendered (for benchmarks)
        self._line_key: tuple[int, Style] = (0, Style())  # (width, style) of this draw
        self._blank = Strip.blank(0)

    # -- blocks: a height per held message; strips only for what is drawn
    def _height(self, index: int) -> int:
        messages = self.window.messages
        return block_height(
            messages[index],
            messages[index - 1] if index else None,
            width=self._width,
            console=self.app.console,
            tz=self._tz,
            search=self.search,
        )

    def _block(self, index: int) -> list[Strip]:
        message = self.window.messages[index]
        cached = self._strips.get(message.id)
        if cached is not None:
            self._strips.move_to_end(message.id)
            return cached
        self.renders += 1
        strips = render_block(
            message,
            self.window.messages[index - 1] if index else None,
            width=self._width,
            console=self.app.console,
            tz=self._tz,
            name_of=self._name_of,
            lookup=self.window.get,
            styles=self._styles,
            search=self.search,
            selected=index == self.selected,
        )
        self._strips[message.id] = strips
        if len(self._strips) > STRIP_CACHE:
            self._strips.popitem(last=False)
        if len(strips) != self._heights[index]:  # never expected; keep lines consistent
            self._heights[index] = len(strips)
            self._reoffset()
        return strips

    def _forget(self, index: int) -> None:
        if 0 <= index < len(self.window.messages):
            self._strips.pop(self.window.messages[index].id, None)

    def _reoffset(self) -> None:
        self._offsets = [0, *accumulate(self._heights)]
        self.virtual_size = Size(self._width, self._offsets[-1])

    def rebuild(self) -> None:
        """Measure every held message again (width, names or search changed)."""
        self._width = max(self.scrollable_content_region.width, 1)
        self._strips.clear()
        self._heights = [self._height(i) for i in range(len(self.window.messages))]
        self._reoffset()
        self.refresh()
        if self._follow:
            self._to_end()

    def _to_end(self) -> None:
        """Show the newest line at the bottom: now, and again once the layout has caught
        up. ``force``: Textual refuses to scroll a view whose scrollbar it has not shown
        yet, which is the case when the page that makes it scrollable has just arrived
        (a long conversation then opened at the top of its newest page, F7)."""
        self.scroll_end(animate=False, immediate=True, force=True)
        self.call_after_refresh(self._to_end_if_following)

    def _to_end_if_following(self) -> None:
        if self._follow and self.scroll_y != self.max_scroll_y:
            self.scroll_end(animate=False, immediate=True, force=True)

    def _refresh_block(self, index: int) -> None:
        if 0 <= index < len(self._heights):
            self._forget(index)
            self._heights[index] = self._height(index)
            self._reoffset()
            self.refresh()

    # -- window changes, each keeping the view still
    def show(self, messages: list[ChatMessage], more: bool) -> None:
        self.window.reset(messages, more)
        self.selected = None
        self._generation += 1
        self.workers.cancel_group(self, "pages")
        self._loading_older = self._loading_newer = False
        self._follow = True
        self.rebuild()

    def add_older(self, messages: list[ChatMessage], more: bool) -> None:
        self._loading_older = False
        had = bool(self._heights)
        added, dropped = self.window.prepend(messages, more)
        if not added:
            return
        if dropped:
            del self._heights[-dropped:]
        if self.selected is not None:
            self.selected += added
            if self.selected >= len(self.window.messages):
                self.selected = None
        new = [self._height(i) for i in range(added)]
        shift = sum(new)
        if had:
            # The old first block may lose its day separator now that its day has a
            # predecessor; the view moves by what was added above the old content.
            self._forget(added)
            old_first = self._heights[0]
            self._heights[0] = self._height(added)
            shift += self._heights[0] - old_first
        self._heights[0:0] = new
        self._reoffset()
        self.scroll_to(y=self.scroll_y + shift, animate=False, immediate=True)
        self.refresh()

    def add_newer(self, messages: list[ChatMessage]) -> None:
        self._loading_newer = False
        added, dropped = self.window.append_newer(messages)
        if not added and not dropped:
            return
        shift = sum(self._heights[:dropped])
        del self._heights[:dropped]
        if dropped and self._heights:
            self._forget(0)
            old_first = self._heights[0]
            self._heights[0] = self._height(0)  # it may gain a day separator
            shift -= self._heights[0] - old_first
        start = len(self._heights)
        self._heights.extend(self._height(i) for i in range(start, start + added))
        if self.selected is not None:
            self.selected = self.selected - dropped if self.selected >= dropped else None
        self._reoffset()
        if dropped:
            self.scroll_to(y=max(self.scroll_y - shift, 0), animate=False, immediate=True)
        self.refresh()

    def add_live(self, message: ChatMessage) -> None:
        follow = self._follow and self.window.at_live_end
        before = len(self.window.messages)
        first = self.window.messages[0].id if self.window.messages else None
        if self.window.add_live(message):
            if self.window.messages and self.window.messages[0].id != first:
                self.rebuild()  # the oldest page was let go
            else:
                self._heights.append(self._height(len(self._heights)))
                self._reoffset()
            if follow:
                self._to_end()
            self.refresh()
        elif len(self.window.messages) == before:
            index = self.window.index_of(message.id)
            if index is not None:
                self._refresh_block(index)

    def set_state(self, message_id: str, state: str, error: str | None) -> None:
        index = self.window.set_state(message_id, state, error)
        if index is not None:
            self._refresh_block(index)

    def set_search(self, text: str | None) -> None:
        self.search = text or None
        self.rebuild()

    def jump_to(self, message_id: str) -> bool:
        """Select a held message and scroll it into the middle of the view."""
        index = self.window.index_of(message_id)
        if index is None:
            return False
        self._select(index)
        y = self._offsets[index] - self.scrollable_content_region.height // 2
        self.scroll_to(y=max(y, 0), animate=False, immediate=True)
        return True

    # -- drawing
    def on_resize(self) -> None:
        self._check_width()
        if self._follow:  # a bar above (request, banner) took rows: keep the newest shown
            self._to_end()

    def watch_show_vertical_scrollbar(self) -> None:
        # The scrollbar appears when the first long page arrives and takes a column
        # without a Resize: measure again for the narrower width (after the layout).
        self.call_later(self._check_width)

    def _check_width(self) -> None:
        if self.scrollable_content_region.width != self._width:
            self.rebuild()

    def render_lines(self, crop: Region) -> list[Strip]:
        # One pass draws every dirty row: look the style and width up once for all of
        # them (``rich_style`` walks the ancestors' CSS; per row it was most of the cost).
        width = self.scrollable_content_region.width
        style = self.rich_style
        if self._line_key != (width, style):
            self._line_key = (width, style)
            self._blank = Strip.blank(width, style)
        return super().render_lines(crop)

    def render_line(self, y: int) -> Strip:
        line = self.scroll_offset.y + y
        width, style = self._line_key
        if line >= self._offsets[-1] or not self._heights:
            return self._blank
        index = bisect.bisect_right(self._offsets, line) - 1
        block = self._block(index)
        row = line - self._offsets[index]
        if row >= len(block):
            return self._blank
        strip = block[row]
        if strip.cell_length == width:
            return strip  # the cached strip itself: Textual's per-strip caches stay warm
        return strip.crop_extend(0, width, style)

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        self._follow = round(new) >= self.max_scroll_y
        self._maybe_load()

    def _maybe_load(self) -> None:
        height = max(self.scrollable_content_region.height, 1)
        cursor = self.window.older_cursor()
        # Ask a page ahead, so that the person holding pageup does not reach the edge
        # before it lands (a page is 4-5 screens; the round trip 10-40 ms, under load).
        ahead = PREFETCH_SCREENS * height
        if cursor is not None and not self._loading_older and self.scroll_y < ahead:
            self._loading_older = True
            self.run_worker(self._load(cursor, self.window.page_size, older=True), group="pages")
        request = self.window.newer_request()
        if (
            request is not None
            and not self._loading_newer
            and self.scroll_y > self.max_scroll_y - ahead
        ):
            self._loading_newer = True
            self.run_worker(self._load(*request, older=False), group="pages")

    async def _load(self, before_seq: int, limit: int, *, older: bool) -> None:
        generation = self._generation
        try:
            page = await self._fetch(before_seq, limit)
        except Exception as exc:  # the node went away or refused: say so, keep the view
            self.notify(f"could not load messages: {exc}", severity="error")
            page = None
        if generation != self._generation:
            return
        if page is None:
            self._loading_older = self._loading_newer = False
            return
        if older:
            self.add_older(*page)
        else:
            self.add_newer(page[0])

    # -- selection and actions
    def _select(self, index: int | None) -> None:
        old, self.selected = self.selected, index
        for i in {old, index}:
            if i is not None:
                self._forget(i)
        self.refresh()

    def selected_message(self) -> ChatMessage | None:
        if self.selected is None or self.selected >= len(self.window.messages):
            return None
        return self.window.messages[self.selected]

    def action_select(self, step: int) -> None:
        count = len(self.window.messages)
        if not count:
            return
        if self.selected is None:
            index = count - 1 if step < 0 else 0
        else:
            index = min(max(self.selected + step, 0), count - 1)
        self._select(index)
        top, bottom = self._offsets[index], self._offsets[index + 1]
        height = self.scrollable_content_region.height
        if top < self.scroll_y:
            self.scroll_to(y=top, animate=False, immediate=True)
        elif bottom > self.scroll_y + height:
            self.scroll_to(y=bottom - height, animate=False, immediate=True)

    def action_page(self, direction: int) -> None:
        height = self.scrollable_content_region.height
        self.scroll_to(y=self.scroll_y + direction * height, animate=False, immediate=True)
        self._maybe_load()

    def action_scroll_top(self) -> None:
        self.scroll_to(y=0, animate=False, immediate=True)
        self._maybe_load()

    def action_scroll_bottom(self) -> None:
        if not self.window.at_live_end:
            self.post_message(self.Latest())  # newer pages were let go: reload the newest
            return
        self.scroll_end(animate=False, immediate=True, force=True)

    def action_reply(self) -> None:
        message = self.selected_message()
        if message is not None:
            self.post_message(self.Reply(message))

    def action_retry(self) -> None:
        message = self.selected_message()
        if message is not None and message.state == "failed":
            self.post_message(self.Retry(message))
        elif message is not None:
            self.notify("only a failed message can be retried", severity="warning")

    def action_open_url(self) -> None:
        message = self.selected_message()
        spans = find_urls(message.body) if message else []
        if message is None or not spans:
            self.notify("no link in the selected message", severity="warning")
            return
        start, end = spans[0]
        self.app.open_url(message.body[start:end])

    def action_copy_message(self) -> None:
        message = self.selected_message()
        if message is not None:
            self.app.copy_to_clipboard(message.body)
            self.notify("message copied")
