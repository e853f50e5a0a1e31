"""An incoming call reaches the person where they are, not only an open page or a
waiting ``mesh call answer``:

- an ``attention`` node event, which ``mesh up`` in the foreground prints as a line with
  a terminal bell (and any control API client may show);
- a desktop notification (freedesktop, when a session bus exists) with the ringtone
  sound hint and two buttons: **Accept** opens the call page, which shows the call
  ringing (one more click there answers it: a page acts only on its person's click),
  and **Reject** rejects it. The notification goes away when the call stops ringing.

The chat TUI shows its own banner from the ``call.incoming`` event (apps/chat).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import webbrowser
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from core import DesktopNotifier, NodeEvent

if TYPE_CHECKING:
    from apps.video.call import Call
    from apps.video.service import CallService

__all__ = ["Ringer", "caller_label"]

log = logging.getLogger(__name__)

RING_SOUND = "phone-incoming-call"  # the freedesktop sound naming spec's ringtone


def caller_label(call: Call) -> str:
    """Our contact's alias, else the key's start and what the caller claims to be."""
    key = call.peer_key.hex()
    if call.alias:
        return f"{call.alias} ({key[:16]}…)"
    claimed = f' (says "{call.remote_name}")' if call.remote_name else ""
    return f"{key[:16]}…{claimed}"


async def _open_in_browser(url: str) -> None:
    await asyncio.to_thread(webbrowser.open, url)


class Ringer:
    def __init__(
        self,
        service: CallService,
        notifier: DesktopNotifier | None = None,
        opener: Callable[[str], Awaitable[None]] = _open_in_browser,
    ) -> None:
        self.service = service
        self.notifier = notifier or DesktopNotifier("mesh call")
        self.opener = opener
        self._shown: dict[str, int] = {}  # call id -> notification id
        self._tasks: set[asyncio.Task[Any]] = set()

    def _own(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def incoming(self, call: Call) -> None:
        """``call`` rings here now."""
        who = caller_label(call)
        media = "" if "video" in call.media else " (audio only)"
        page = self.service.page
        how = "mesh call answer" + (f", or the page {page.url}" if page is not None else "")
        title, text = f"incoming call{media}", f"from {who} — {how}"
        attention = {"app": "video", "id": call.id, "title": title, "text": text}
        self.service.node.events.publish(NodeEvent("attention", attention))
        self._own(self._notify(call, who + media))

    def stopped(self, call_id: str) -> None:
        """``call_id`` no longer rings (answered, rejected, missed, cancelled)."""
        ident = self._shown.pop(call_id, None)
        if ident is not None:
            self._own(self.notifier.withdraw(ident))

    async def _notify(self, call: Call, who: str) -> None:
        def pressed(key: str) -> None:
            self._shown.pop(call.id, None)
            self._own(self._act(call.id, key))

        ident = await self.notifier.notify(
            "Incoming call",
            who,
            actions=[("accept", "Accept"), ("reject", "Reject")],
            on_action=pressed,
            sound=RING_SOUND,
            category="call.incoming",
            urgent=True,
        )
        if ident is None:
            return
        if call.state.value == "ringing":
            self._shown[call.id] = ident
        else:  # it stopped ringing while the notification was on its way
            await self.notifier.withdraw(ident)

    async def _act(self, call_id: str, key: str) -> None:
        methods = self.service.control_methods()
        try:
            if key == "reject":
                await methods["call.reject"]({"id": call_id})
            elif key == "accept":
                page = self.service.page
                if page is None:  # no page: the call is answered here, audio only
                    await methods["call.answer"]({"id": call_id, "audio_only": True})
                else:
                    await self.opener(page.url_with_token())
        except Exception as exc:  # the call may have ended meanwhile
            log.info("notification action %s on call %s: %s", key, call_id[:8], exc)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.notifier.close()
