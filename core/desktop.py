"""Desktop notifications: the freedesktop.org Notifications service over the session
D-Bus (GNOME, KDE, XFCE, dunst, mako...), for anything that should reach the person at
their desk (an incoming call rings there).

Used only when a session bus exists (``DBUS_SESSION_BUS_ADDRESS``); without one, or when
nothing answers on it, :meth:`DesktopNotifier.notify` returns None and the app carries
on (its other ways of ringing still work). A notification may carry actions (buttons):
the server tells which one was pressed (``ActionInvoked``), and the callback given with
the notification is run, once.

Remote text must not drive the notification: the summary and body go through
:func:`core.text.safe_line` and the body is markup-escaped (servers that render
``body-markup`` would otherwise take a peer's ``<a href=…>`` as a link).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from core.text import safe_line

__all__ = ["DesktopNotifier", "has_session_bus"]

log = logging.getLogger(__name__)

SERVICE = "org.freedesktop.Notifications"
PATH = "/org/freedesktop/Notifications"
CALL_TIMEOUT = 3.0  # a notification server that does not answer is no server
MAX_TEXT = 200


def has_session_bus() -> bool:
    return bool(os.environ.get("DBUS_SESSION_BUS_ADDRESS"))


class DesktopNotifier:
    """One connection to the session bus, opened on first use; :meth:`close` ends it."""

    def __init__(self, app_name: str = "mesh") -> None:
        self.app_name = app_name
        self._router: Any = None
        self._stack = contextlib.AsyncExitStack()
        self._reader: asyncio.Task[None] | None = None
        self._actions: dict[int, Callable[[str], None]] = {}
        self._lock = asyncio.Lock()
        self._broken = False

    async def _connect(self) -> Any:
        async with self._lock:
            if self._router is not None or self._broken:
                return self._router
            from jeepney import MatchRule, message_bus
            from jeepney.io.asyncio import Proxy, open_dbus_router

            try:
                async with asyncio.timeout(CALL_TIMEOUT):
                    router = await self._stack.enter_async_context(open_dbus_router())
                    rule = MatchRule(type="signal", interface=SERVICE, path=PATH)
                    await Proxy(message_bus, router).AddMatch(rule)
            except (OSError, TimeoutError, RuntimeError, EOFError, KeyError) as exc:
                log.info("no desktop notifications: %s", exc)
                self._broken = True
                await self._stack.aclose()
                return None
            queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=64)
            self._stack.enter_context(router.filter(rule, queue=queue, bufsize=64))
            self._reader = asyncio.ensure_future(self._signals(queue))
            self._router = router
            return router

    async def notify(
        self,
        title: str,
        body: str,
        *,
        actions: Sequence[tuple[str, str]] = (),
        on_action: Callable[[str], None] | None = None,
        sound: str | None = None,
        category: str | None = None,
        urgent: bool = False,
        replaces: int = 0,
    ) -> int | None:
        """Show a notification (``actions``: (key, label) buttons; ``on_action(key)``
        runs when one is pressed); its id, or None when there is no desktop to show it."""
        if not has_session_bus():
            return None
        router = await self._connect()
        if router is None:
            return None
        from jeepney import DBusAddress, new_method_call

        hints: dict[str, tuple[str, Any]] = {"urgency": ("y", 2 if urgent else 1)}
        if sound:
            hints["sound-name"] = ("s", sound)
        if category:
            hints["category"] = ("s", category)
        flat = [part for key, label in actions for part in (key, label)]
        address = DBusAddress(PATH, bus_name=SERVICE, interface=SERVICE)
        summary = safe_line(title)[:MAX_TEXT]
        text = html.escape(safe_line(body)[:MAX_TEXT], quote=False)
        message = new_method_call(
            address,
            "Notify",
            "susssasa{sv}i",
            (self.app_name, replaces, "", summary, text, flat, hints, -1 if urgent else 10_000),
        )
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                reply = await router.send_and_get_reply(message)
        except (OSError, TimeoutError, RuntimeError) as exc:
            log.info("desktop notification not shown: %s", exc)
            return None
        if reply.header.message_type.name != "method_return":
            log.info("desktop notification refused: %s", reply.body)
            return None
        ident = int(reply.body[0])
        if on_action is not None:
            self._actions[ident] = on_action
            while len(self._actions) > 64:
                self._actions.pop(next(iter(self._actions)))
        return ident

    async def withdraw(self, ident: int | None) -> None:
        """Close notification ``ident`` (a call that stopped ringing)."""
        if ident is None or self._router is None:
            return
        self._actions.pop(ident, None)
        from jeepney import DBusAddress, new_method_call

        address = DBusAddress(PATH, bus_name=SERVICE, interface=SERVICE)
        with contextlib.suppress(OSError, TimeoutError, RuntimeError):
            async with asyncio.timeout(CALL_TIMEOUT):
                await self._router.send_and_get_reply(
                    new_method_call(address, "CloseNotification", "u", (ident,))
                )

    async def _signals(self, queue: asyncio.Queue[Any]) -> None:
        while True:
            message = await queue.get()
            member = message.header.fields.get(_member_field())
            if member == "ActionInvoked":
                ident, key = message.body
                callback = self._actions.pop(int(ident), None)
                if callback is not None:
                    try:
                        callback(str(key))
                    except Exception:
                        log.exception("a notification's action failed")
            elif member == "NotificationClosed":
                self._actions.pop(int(message.body[0]), None)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        self._router = None
        with contextlib.suppress(Exception):
            await self._stack.aclose()


def _member_field() -> Any:
    from jeepney.low_level import HeaderFields

    return HeaderFields.member
