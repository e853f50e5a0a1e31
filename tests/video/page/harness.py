"""Two nodes in this process, each with its call service and call page, and the
system Chromium to open the pages in (tests and the bench)."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from apps.video.service import CallService, VideoConfig
from core.node import Node
from core.testing import mem_mesh
from tests.video.page.cdp import Chromium, Tab, chromium_path

__all__ = ["INBOUND", "PagePair", "inbound", "need_chromium", "page_pair", "press_call"]

# Inbound RTP of the page's loopback leg: what the page decoded of the mesh call.
INBOUND = """(async () => {
  const out = {video: 0, audio: 0, width: 0};
  if (!meshCall.pc) return out;
  (await meshCall.pc.getStats()).forEach((s) => {
    if (s.type !== "inbound-rtp") return;
    if (s.kind === "video") { out.video = s.framesDecoded || 0; out.width = s.frameWidth || 0; }
    if (s.kind === "audio") out.audio = s.packetsReceived || 0;
  });
  return out;
})()"""


def need_chromium() -> None:
    """Fail under CI=true without chromium, skip (saying why) otherwise."""
    if chromium_path() is not None:
        return
    why = "no chromium on PATH: scripts/install-system installs it (apt-get install chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    print(why, file=sys.stderr)
    pytest.skip(why)


@dataclass
class PagePair:
    a: Node
    b: Node
    call_a: CallService
    call_b: CallService
    browser: Chromium
    # With page_pair(stranger=NAME): a third node, in nobody's contacts, that calls itself
    # NAME (its page is off).
    c: Node | None = None
    call_c: CallService | None = None

    def url(self, service: CallService, call: str | None = None) -> str:
        assert service.page is not None
        return service.page.url_with_token(call)

    async def open_both(self) -> tuple[Tab, Tab]:
        """B's page waiting, and A's page opened preset on B (``mesh call page bob``),
        where A's person presses Call."""
        tab_b = await self.browser.open(self.url(self.call_b))
        await tab_b.wait("window.meshCall && meshCall.mediaReady")
        tab_a = await self.browser.open(self.url(self.call_a, self.b.key.hex()))
        await press_call(tab_a)
        return tab_a, tab_b


async def press_call(tab: Tab) -> None:
    """Once the page is connected and preset by its URL, its person presses Call."""
    await tab.wait("window.meshCall && meshCall.mediaReady && meshCall.preset !== null")
    await tab.click("#dial-go")


async def inbound(tab: Tab) -> dict[str, int]:
    got: dict[str, int] = await tab.evaluate(INBOUND)
    return got


@asynccontextmanager
async def page_pair(root: Path, *, stranger: str | None = None) -> AsyncIterator[PagePair]:
    need_chromium()
    async with mem_mesh(3 if stranger else 2, root) as mesh, AsyncExitStack() as stack:
        a, b = mesh[0], mesh[1]
        await a.contacts.add(b.key, alias="bob")
        await b.contacts.add(a.key, alias="alice")
        services = []
        for node, config, name in ((a, {"name": "alice"}, "a"), (b, {"name": "bob"}, "b")):
            service = CallService(node, VideoConfig.from_mapping(config), root / f"video-{name}")
            await service.start()
            stack.push_async_callback(service.close)
            services.append(service)
        c = call_c = None
        if stranger:
            c = mesh[2]
            config = {"name": stranger, "page": "off"}
            call_c = CallService(c, VideoConfig.from_mapping(config), root / "video-c")
            await call_c.start()
            stack.push_async_callback(call_c.close)
        browser = await stack.enter_async_context(Chromium(root / "browser"))
        yield PagePair(a, b, services[0], services[1], browser, c, call_c)
