"""The call page against another local page, in headless Chromium (Debian's): a page
served on another port of 127.0.0.1 (the same site, so the browser sends the page's
SameSite=Strict cookie along) tries to make the call page dial a stranger, to frame it
and to open its WebSocket. Nothing but a person's click on the page itself places a
call; see docs/security.md, "The call page"."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from apps.video.service import CallService, VideoConfig
from core.testing import mem_mesh
from tests.video.page.cdp import Tab
from tests.video.page.harness import page_pair, press_call

ATTACK_WS = """<script>
window.result = null;
try {
  const ws = new WebSocket("ws://127.0.0.1:%(port)d/ws");
  ws.onopen = () => { window.result = "open"; ws.send(JSON.stringify(
    {op: "place", contact: "%(key)s", source: "testsrc"})); };
  ws.onclose = () => { if (window.result === null) window.result = "refused"; };
} catch (e) { window.result = "threw " + e; }
</script>"""
ATTACK_FRAME = """<iframe id="victim" src="http://127.0.0.1:%(port)d/?call=%(key)s"
  onload="window.loaded = true"></iframe>"""
ATTACK_NAVIGATE = """<script>
location.href = "http://127.0.0.1:%(port)d/?call=%(key)s";
</script>"""


async def round_trip(tab: Tab) -> None:
    """A refresh sent and its hello back, then half a second: what the page sent before
    has reached the node and been acted on."""
    seen = await tab.evaluate("meshCall.hellos")
    await tab.evaluate("send({op: 'refresh'})")
    await tab.wait(f"meshCall.hellos > {seen}")
    await asyncio.sleep(0.5)


@asynccontextmanager
async def attacker(pages: dict[str, str]) -> AsyncIterator[int]:
    """A web server on another port of 127.0.0.1 serving ``pages`` (path: HTML)."""

    async def serve(request: web.Request) -> web.Response:
        return web.Response(text=pages[request.path], content_type="text/html")

    app = web.Application()
    for path in pages:
        app.router.add_get(path, serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


@pytest.mark.timeout(120)
async def test_another_local_page_can_preselect_but_never_dial_frame_or_drive_the_page(
    tmp_path: Path,
) -> None:
    async with page_pair(tmp_path) as pair:
        page_a = pair.call_a.page
        assert page_a is not None
        # The victim has opened their page once: the browser holds its cookie.
        tab = await pair.browser.open(pair.url(pair.call_a))
        await tab.wait("window.meshCall && meshCall.mediaReady")
        fill = {"port": page_a.port, "key": pair.b.key.hex()}
        pages = {
            "/navigate": ATTACK_NAVIGATE % fill,
            "/frame": ATTACK_FRAME % fill,
            "/ws": ATTACK_WS % fill,
        }
        async with attacker(pages) as port:
            evil = f"http://127.0.0.1:{port}"
            # 1. Navigating the victim's tab to ?call=B: the page opens preset on B, and
            # waits for its person; no call is placed.
            await tab.send("Page.navigate", url=f"{evil}/navigate")
            await tab.wait(
                f"location.port === '{page_a.port}' && window.meshCall && meshCall.mediaReady"
                " && meshCall.preset !== null"
            )
            assert await tab.evaluate("meshCall.view") == "idle"
            assert await tab.evaluate("document.getElementById('dial-to').value") == "bob"
            hint = await tab.evaluate("document.getElementById('preset').textContent")
            assert hint == "Press Call to call bob."
            assert await tab.evaluate("location.search") == ""  # the preset is not kept
            # The page is fully up: its WebSocket and media leg are open and it has had
            # its hello; a dialling page would have sent "place" by now. Give it a moment
            # more all the same (the round trip of a refresh) before looking.
            await round_trip(tab)
            assert pair.call_a.current() is None
            assert pair.call_b.current() is None
            assert await pair.call_a.control_methods()["call.log"]({}) == []
            # 2. Framing the page (to lay it under a decoy and steal a click): the browser
            # refuses to render it; no page script runs, no WebSocket opens.
            before = len(page_a.pages)
            framer = await pair.browser.open(f"{evil}/frame")
            await framer.wait("window.loaded === true")
            tree = await framer.send("Page.getFrameTree")
            child = tree["frameTree"]["childFrames"][0]["frame"]
            assert child.get("unreachableUrl") or child["url"].startswith("chrome-error:"), child
            assert len(page_a.pages) == before
            # 3. Its WebSocket from the other page (the cookie rides along): refused.
            opener = await pair.browser.open(f"{evil}/ws")
            result = await opener.wait("window.result")
            assert result == "refused"
            assert pair.call_a.current() is None and pair.call_b.current() is None
        # The person's own click on the preset page calls B.
        await tab.send("Page.navigate", url=pair.url(pair.call_a, pair.b.key.hex()))
        await press_call(tab)
        await tab.wait("meshCall.view === 'outgoing'")
        for _ in range(200):
            if pair.call_b.current() is not None:
                break
            await asyncio.sleep(0.05)
        ringing = pair.call_b.current()
        assert ringing is not None and ringing.peer_key == pair.a.key


@pytest.mark.timeout(60)
async def test_a_script_click_is_not_a_persons_click(tmp_path: Path) -> None:
    """Buttons that place, answer or reject act only on trusted (person-made) events."""
    async with page_pair(tmp_path) as pair:
        tab = await pair.browser.open(pair.url(pair.call_a, pair.b.key.hex()))
        await tab.wait("meshCall.mediaReady && meshCall.preset !== null")
        await tab.evaluate(
            "document.getElementById('dial-go').click();"
            "document.getElementById('dial').requestSubmit();"
            "document.getElementById('dial').dispatchEvent(new Event('submit'));"
        )
        await round_trip(tab)
        assert await tab.evaluate("meshCall.view") == "idle"
        assert pair.call_b.current() is None


async def test_every_response_forbids_framing(tmp_path: Path) -> None:
    async with mem_mesh(1, tmp_path) as mesh:
        service = CallService(mesh[0], VideoConfig.from_mapping({}), tmp_path / "video")
        await service.start()
        try:
            page = service.page
            assert page is not None
            base = page.url.rstrip("/")
            jar = aiohttp.CookieJar(unsafe=True)
            async with aiohttp.ClientSession(cookie_jar=jar) as http:
                async with http.get(base + "/static/call.js") as reply:
                    assert reply.status == 403
                    seen = [reply.headers]
                async with http.get(page.url_with_token(), allow_redirects=False) as reply:
                    seen.append(reply.headers)
                for path in ("/", "/static/call.js", "/static/nothing"):
                    async with http.get(base + path) as reply:
                        assert reply.status in (200, 404), path
                        seen.append(reply.headers)
                for headers in seen:
                    assert headers["X-Frame-Options"] == "DENY"
                    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
                    assert headers["X-Content-Type-Options"] == "nosniff"
                # The cookie, from another origin (another port, the same site): refused.
                other = f"http://127.0.0.1:{page.port + 1 if page.port < 65535 else 1}"
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await http.ws_connect(base + "/ws", origin=other)
                assert refused.value.status == 403
                async with http.ws_connect(base + "/ws", origin=base) as ws:
                    assert json.loads((await ws.receive(timeout=5)).data)["type"] == "hello"
        finally:
            await service.close()
