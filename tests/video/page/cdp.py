"""A small DevTools-protocol harness for the system's headless Chromium (Debian's
``chromium``): start it, open tabs, evaluate JavaScript, take screenshots. No
Playwright, no browser download.

    async with Chromium(tmp_path) as browser:
        tab = await browser.open(url)
        await tab.wait("window.meshCall && window.meshCall.mediaReady")
        png = await tab.screenshot()
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

__all__ = ["CdpError", "Chromium", "Tab", "chromium_path"]

FLAGS = (
    "--headless=new",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-features=MediaRouter,OptimizationHints,Translate",
    "--mute-audio",
    # Anything not on loopback goes to a closed port: the page must need no network.
    "--proxy-server=http://127.0.0.1:9",
    "--remote-debugging-port=0",
)


class CdpError(RuntimeError):
    pass


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Tab:
    def __init__(self, browser: Chromium, target: str, session: str) -> None:
        self.browser, self.target, self.session = browser, target, session
        self.requests: list[str] = []  # every URL the tab asked for (Network.enable)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.browser.send(method, params, session=self.session)

    async def evaluate(self, expression: str, timeout: float = 10.0) -> Any:
        reply = await asyncio.wait_for(
            self.send(
                "Runtime.evaluate",
                expression=expression,
                awaitPromise=True,
                returnByValue=True,
            ),
            timeout,
        )
        if "exceptionDetails" in reply:
            raise CdpError(f"{expression!r}: {reply['exceptionDetails']}")
        return reply.get("result", {}).get("value")

    async def wait(self, expression: str, timeout: float = 20.0, every: float = 0.1) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            with contextlib.suppress(CdpError):
                last = await self.evaluate(expression)
                if last:
                    return last
            await asyncio.sleep(every)
        state = await self.evaluate(
            "JSON.stringify({view: window.meshCall && meshCall.view,"
            " errors: window.meshCall && meshCall.errors,"
            " events: window.meshCall && meshCall.events})"
        )
        raise AssertionError(f"not true after {timeout} s: {expression} (last {last!r}; {state})")

    async def screenshot(self) -> bytes:
        reply = await self.send("Page.captureScreenshot", format="png")
        return base64.b64decode(reply["data"])

    async def click(self, selector: str, timeout: float = 20.0) -> None:
        """A person's click (a trusted mouse event, as the page requires to place, answer
        or reject) at the middle of the first visible element matching ``selector``."""
        where = json.dumps(selector)
        box = await self.wait(
            f"""(() => {{ const e = document.querySelector({where});
              if (!e) return null; e.scrollIntoView({{block: "center"}});
              const r = e.getBoundingClientRect(), x = r.x + r.width / 2, y = r.y + r.height / 2;
              const hit = document.elementFromPoint(x, y);
              return r.width > 0 && r.height > 0 && !e.disabled && hit && e.contains(hit)
                && [x, y]; }})()""",
            timeout,
        )
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1
            )

    async def key(self, key: str) -> None:
        for kind in ("keyDown", "keyUp"):
            await self.send("Input.dispatchKeyEvent", type=kind, key=key, text=key)


class Chromium:
    def __init__(self, root: Path, *, width: int = 1000, height: int = 760) -> None:
        self.root = root
        self.size = (width, height)
        self.proc: subprocess.Popen[bytes] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._tabs: dict[str, Tab] = {}

    async def __aenter__(self) -> Chromium:
        exe = chromium_path()
        if exe is None:
            raise CdpError("no chromium on PATH (scripts/install-system installs it)")
        profile = self.root / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        log = (self.root / "chromium.log").open("wb")
        window = f"--window-size={self.size[0]},{self.size[1]}"
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - Popen returns at once; waited in a thread
            [exe, *FLAGS, f"--user-data-dir={profile}", window, "about:blank"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        try:
            port_file = profile / "DevToolsActivePort"
            deadline = time.monotonic() + 30
            while not port_file.exists() or len(port_file.read_text().splitlines()) < 2:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise CdpError(f"chromium did not start: see {self.root / 'chromium.log'}")
                await asyncio.sleep(0.05)
            port, path = port_file.read_text().splitlines()[:2]
            self._http = aiohttp.ClientSession()
            self._ws = await self._http.ws_connect(
                f"ws://127.0.0.1:{port}{path}", max_msg_size=64 * 1024 * 1024
            )
            self._reader = asyncio.ensure_future(self._read())
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            if self._ws is not None and not self._ws.closed:
                await asyncio.wait_for(self.send("Browser.close", {}), 3)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()
        if self.proc is not None:
            try:
                await asyncio.to_thread(self.proc.wait, 5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, 9)
                await asyncio.to_thread(self.proc.wait, 5)

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            if "id" in data:
                future = self._waiting.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            elif data.get("method") == "Network.requestWillBeSent":
                tab = self._tabs.get(data.get("sessionId", ""))
                if tab is not None:
                    tab.requests.append(data["params"]["request"]["url"])
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(CdpError("the browser closed the DevTools connection"))

    async def send(
        self, method: str, params: dict[str, Any], *, session: str | None = None
    ) -> dict[str, Any]:
        assert self._ws is not None
        ident = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        await self._ws.send_str(json.dumps(message))
        reply = await asyncio.wait_for(future, 30)
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def open(self, url: str, *, before: str | None = None) -> Tab:
        """A new tab (its own window) on ``url``, network requests recorded; ``before``:
        a script run in it before the page's own."""
        width, height = self.size
        created = await self.send(
            "Target.createTarget",
            {"url": "about:blank", "newWindow": True, "width": width, "height": height},
        )
        target = created["targetId"]
        attached = await self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        tab = Tab(self, target, attached["sessionId"])
        self._tabs[tab.session] = tab
        await tab.send("Network.enable")
        await tab.send("Page.enable")
        await tab.send(
            "Emulation.setDeviceMetricsOverride",
            width=self.size[0],
            height=self.size[1],
            deviceScaleFactor=1,
            mobile=False,
        )
        if before is not None:
            await tab.send("Page.addScriptToEvaluateOnNewDocument", source=before)
        await tab.send("Page.navigate", url=url)
        return tab
