"""A private session D-Bus (Debian's dbus-daemon) with a freedesktop notification
server on it, for the tests of desktop notifications: the server records every
Notify / CloseNotification and can press a notification's button (ActionInvoked)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from jeepney import DBusAddress, MatchRule, message_bus, new_method_return, new_signal
from jeepney.io.asyncio import Proxy, open_dbus_router

__all__ = ["FakeNotifications", "session_bus"]

SERVICE = "org.freedesktop.Notifications"
PATH = "/org/freedesktop/Notifications"


def need_dbus() -> str:
    found = shutil.which("dbus-daemon")
    if found:
        return found
    why = "no dbus-daemon: scripts/install-system installs it (apt-get install dbus-daemon)"
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    print(why, file=sys.stderr)
    pytest.skip(why)


@dataclass
class FakeNotifications:
    """What a desktop's notification server saw, and its buttons."""

    router: Any
    shown: list[dict[str, Any]] = field(default_factory=list)
    closed: list[int] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait(self, check: Any, timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                self.changed.clear()
                await self.changed.wait()

    async def press(self, ident: int, key: str) -> None:
        address = DBusAddress(PATH, interface=SERVICE)
        await self.router.send(new_signal(address, "ActionInvoked", "us", (ident, key)))

    async def serve(self, queue: asyncio.Queue[Any]) -> None:
        from jeepney.low_level import HeaderFields

        while True:
            message = await queue.get()
            member = message.header.fields.get(HeaderFields.member)
            if member == "Notify":
                app, _, _, summary, body, actions, hints, timeout = message.body
                ident = len(self.shown) + 1
                self.shown.append(
                    {
                        "id": ident,
                        "app": app,
                        "summary": summary,
                        "body": body,
                        "actions": list(actions),
                        "hints": dict(hints),
                        "timeout": timeout,
                    }
                )
                await self.router.send(new_method_return(message, "u", (ident,)))
            elif member == "CloseNotification":
                self.closed.append(int(message.body[0]))
                await self.router.send(new_method_return(message))
            self.changed.set()


@contextlib.asynccontextmanager
async def session_bus(root: Path) -> AsyncIterator[FakeNotifications]:
    """A session bus at ``root``/bus (DBUS_SESSION_BUS_ADDRESS set meanwhile) with the
    notification server on it."""
    daemon = need_dbus()
    socket = root / "bus"
    proc = subprocess.Popen(  # noqa: ASYNC220 - Popen returns at once; waited in a thread
        [daemon, "--session", "--nofork", "--nopidfile", f"--address=unix:path={socket}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    old = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    try:
        for _ in range(200):
            if socket.exists():
                break
            await asyncio.sleep(0.025)
        address = f"unix:path={socket}"
        os.environ["DBUS_SESSION_BUS_ADDRESS"] = address
        async with open_dbus_router(address) as router:
            await Proxy(message_bus, router).RequestName(SERVICE)
            rule = MatchRule(type="method_call", interface=SERVICE)
            fake = FakeNotifications(router)
            with router.filter(rule, bufsize=64) as queue:
                server = asyncio.ensure_future(fake.serve(queue))
                try:
                    yield fake
                finally:
                    server.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await server
    finally:
        if old is None:
            os.environ.pop("DBUS_SESSION_BUS_ADDRESS", None)
        else:
            os.environ["DBUS_SESSION_BUS_ADDRESS"] = old
        proc.terminate()
        await asyncio.to_thread(proc.wait, 5)
