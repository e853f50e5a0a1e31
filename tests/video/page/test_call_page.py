"""The call page in headless Chromium (Debian's): node A's page calls node B, B's page
accepts, both pages decode the other's video and audio, B hangs up; the layout against a
stored reference; the privacy rule through the page; no network but loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import av
import pytest

from apps.video import sdp
from apps.video.call import CallOptions
from apps.video.page.bridge import is_loopback
from apps.video.page.lazy import PAGE_FILE
from apps.video.service import CallService, VideoConfig
from core.testing import mem_mesh
from tests.video.page.cdp import Tab
from tests.video.page.harness import INBOUND, PagePair, inbound, page_pair, press_call
from tests.video.page.shots import boxes, decode

REFERENCE = Path(__file__).with_name("reference-incall.png")
BUTTONS = ("mute", "camera", "source", "hangup")


async def in_call(pair: PagePair) -> tuple[Tab, Tab]:
    """Open both pages; A's URL dials B; B accepts with video; both show the call."""
    tab_a, tab_b = await pair.open_both()
    await tab_b.wait("meshCall.view === 'incoming'")
    text = await tab_b.evaluate("document.getElementById('in-name').textContent")
    assert text == "alice"  # B's contacts name the caller
    key = await tab_b.evaluate("document.getElementById('in-key').textContent")
    assert key == pair.a.key.hex()
    await tab_b.click("#accept-video")
    await tab_a.wait("meshCall.view === 'incall'")
    await tab_b.wait("meshCall.view === 'incall'")
    return tab_a, tab_b


async def decoding(tab: Tab, what: str) -> dict[str, int]:
    """Inbound video frames decoded > 0 and advancing, and inbound audio."""
    first = await tab.wait(f"({INBOUND}).then(s => s.video > 0 && s.audio > 0 && s)", 30)
    await asyncio.sleep(1.5)
    later = await inbound(tab)
    assert later["video"] > first["video"], f"{what}: video frames decoded stopped: {first} {later}"
    assert later["audio"] > first["audio"], f"{what}: audio stopped: {first} {later}"
    return later


@asynccontextmanager
async def calling(root: Path) -> AsyncIterator[tuple[PagePair, Tab, Tab]]:
    """A's page in a call with B's page, A's page decoding B's video and audio."""
    async with page_pair(root) as pair:
        tab_a, tab_b = await in_call(pair)
        await decoding(tab_a, "A's page")
        yield pair, tab_a, tab_b


@pytest.mark.timeout(90)
async def test_a_page_calls_b_page_both_decode_video_and_audio_and_b_hangs_up(
    tmp_path: Path,
) -> None:
    async with calling(tmp_path) as (pair, tab_a, tab_b):
        await decoding(tab_b, "B's page")
        # The engine's call is an ordinary one: status shows it active on both nodes.
        status = await pair.call_a.control_methods()["call.status"]({})
        assert status["state"] == "active" and status["peer"] == pair.b.key.hex()
        assert await tab_a.evaluate("document.getElementById('remote').hidden") is False
        # m (mute) on A's page reaches B as the remote side's update.
        await tab_a.key("m")
        await tab_b.wait("document.getElementById('call-name').textContent.includes('muted')")
        # Mute and camera from elsewhere (`mesh call unmute`, `camera off`, another tab)
        # show on the page's buttons: one state for every tab.
        update = pair.call_a.control_methods()["call.update"]
        await update({"audio_muted": False, "video_off": True})
        await tab_a.wait("document.getElementById('mute').textContent === 'Mute'")
        await tab_a.wait("document.getElementById('camera').textContent === 'Camera on'")
        assert await tab_a.evaluate("meshCall.local.getVideoTracks()[0].enabled") is False
        await tab_b.evaluate("document.getElementById('hangup').click()")
        await tab_a.wait("meshCall.view === 'ended'")
        reason = await tab_a.evaluate("document.getElementById('end-reason').textContent")
        assert reason == "call ended"
        assert pair.call_a.current() is None
        log = await pair.call_a.control_methods()["call.log"]({"limit": 1})
        assert log[0]["result"] == "answered" and log[0]["duration_s"] > 1


@pytest.mark.timeout(90)
async def test_in_call_page_matches_reference_and_sdp_stays_on_mesh_and_loopback(
    tmp_path: Path,
) -> None:
    async with calling(tmp_path) as (pair, tab_a, tab_b):
        await asyncio.sleep(1.0)
        png = await tab_a.screenshot()
        if os.environ.get("CALL_PAGE_REFERENCE") == "write":
            REFERENCE.write_bytes(png)
        shot, ref = decode(png), decode(REFERENCE.read_bytes())
        assert (shot.width, shot.height) == (ref.width, ref.height)
        layout = await boxes(tab_a)
        video = layout["remote"]
        assert video[2] > 400 and video[3] > 300, layout
        # The remote video is a picture (not black, not flat) where the reference has one.
        assert shot.mean(video) > 30 and shot.spread(video) > 8, (shot.mean(video), video)
        assert ref.spread(video) > 8
        for name in BUTTONS:  # each button drawn where and as the reference has it
            box = layout[name]
            assert box[2] > 30 and box[3] > 20, (name, box)
            assert box[1] + box[3] <= shot.height and box[1] > video[1] + video[3] - 5, (name, box)
            assert abs(shot.mean(box) - ref.mean(box)) < 25, (name, shot.mean(box), ref.mean(box))
        # The privacy rule through the page.
        mesh = {str(pair.a.address), str(pair.b.address)}
        for service, node in ((pair.call_a, pair.a), (pair.call_b, pair.b)):
            assert service.sent_sdp, "no SDP went to the mesh peer"
            for text in service.sent_sdp:
                assert set(sdp.addresses(text)) == {str(node.address)}, text
            assert service.page is not None
            for page in service.page.pages:
                leg = list(page.bridge.sent_sdp) + list(page.bridge.received_sdp)
                assert leg, "no loopback leg"
                for text in leg:
                    found = [a for a in sdp.addresses(text) if a != "0.0.0.0"]
                    assert found and all(is_loopback(a) for a in found), found
        # The browser never sees a mesh address.
        seen = await tab_a.evaluate(
            "JSON.stringify([meshCall.call, document.body.innerText,"
            " meshCall.pc.remoteDescription.sdp, meshCall.pc.localDescription.sdp])"
        )
        for address in mesh:
            assert address not in seen
            assert str(ipaddress.IPv6Address(address).exploded) not in seen
        # Everything the pages loaded came from their own node on loopback (the browser's
        # proxy for anything else is a closed port).
        for tab, service in ((tab_a, pair.call_a), (tab_b, pair.call_b)):
            assert service.page is not None
            own = f"http://127.0.0.1:{service.page.port}/"
            assert tab.requests and all(url.startswith(own) for url in tab.requests), tab.requests


async def test_requests_without_the_token_get_403(tmp_path: Path) -> None:
    async with mem_mesh(1, tmp_path) as mesh:
        service = CallService(mesh[0], VideoConfig.from_mapping({}), tmp_path / "video")
        await service.start()
        try:
            page = service.page
            assert page is not None
            base = page.url.rstrip("/")
            jar = aiohttp.CookieJar(unsafe=True)  # it keeps cookies of IP hosts only so
            async with aiohttp.ClientSession(cookie_jar=jar) as http:
                for path in ("/", "/static/call.js", "/static/call.css", "/ws", "/?token=wrong"):
                    async with http.get(base + path) as reply:
                        assert reply.status == 403, path
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await http.ws_connect(base + "/ws")
                assert refused.value.status == 403
                # The token sets the cookie and drops itself from the address.
                async with http.get(page.url_with_token(), allow_redirects=False) as reply:
                    assert reply.status == 303 and reply.headers["Location"] == "/"
                    cookie = reply.cookies[page.cookie]
                    assert cookie["httponly"] and cookie["samesite"] == "Strict"
                async with http.get(base + "/static/call.js") as reply:
                    assert reply.status == 200
                # A WebSocket without its Origin (a browser always sends one) is refused.
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await http.ws_connect(base + "/ws")
                assert refused.value.status == 403
                async with http.ws_connect(base + "/ws", origin=base) as ws:
                    hello = json.loads((await ws.receive(timeout=5)).data)
                    assert hello["type"] == "hello"
                    # Garbage from a page is refused with a reason; the page stays served.
                    for junk in (
                        "not json",
                        "[1]",
                        '{"op": "fly"}',
                        '{"op": "place"}',
                        '{"op": "answer"}',
                        '{"op": "hangup"}',
                        '{"op": "offer", "sdp": "v=0\\r\\nm=video x"}',
                        '{"op": "offer", "sdp": 5}',
                    ):
                        await ws.send_str(junk)
                        reply = json.loads((await ws.receive(timeout=10)).data)
                        assert reply["type"] == "error" and reply["message"], (junk, reply)
                    await ws.send_str('{"op": "refresh"}')
                    assert json.loads((await ws.receive(timeout=5)).data)["type"] == "hello"
                # A rebound name or a foreign page is refused even with the cookie.
                for headers in ({"Host": "evil.example:80"}, {"Origin": "http://evil.example"}):
                    async with http.get(base + "/static/call.js", headers=headers) as reply:
                        assert reply.status == 403, headers
            assert service.endpoints()["page"] == page.url  # status shows no token
            assert page.token not in json.dumps(service.endpoints())
        finally:
            await service.close()


NO_CAMERA = """navigator.mediaDevices.getUserMedia = () =>
  Promise.reject(new DOMException("no camera here", "NotFoundError"));"""


@pytest.mark.timeout(90)
async def test_a_page_without_a_camera_calls_with_the_node_test_pattern_and_cli_hangup_ends_it(
    tmp_path: Path,
) -> None:
    async with page_pair(tmp_path) as pair:
        tab_a = await pair.browser.open(pair.url(pair.call_a, pair.b.key.hex()), before=NO_CAMERA)
        await press_call(tab_a)
        await tab_a.wait("meshCall.mediaReady && meshCall.view === 'outgoing'")
        note = await tab_a.evaluate("document.getElementById('note').textContent")
        assert "test pattern" in note
        # B takes it headless, as `mesh call answer` does: the page's call is an engine call.
        for _ in range(200):
            ringing = pair.call_b.current()
            if ringing is not None and ringing.state.value == "ringing":
                break
            await asyncio.sleep(0.05)
        await pair.call_b.control_methods()["call.answer"]({})
        await decoding(tab_a, "A's page")
        current = pair.call_b.current()
        assert current is not None and current.sink is not None
        for _ in range(100):  # A's node sends its coded test pattern in the camera's place
            if len(current.sink.stamps) > 5:
                break
            await asyncio.sleep(0.1)
        assert len(current.sink.stamps) > 5
        # `mesh call hangup` on A (the control method) ends the page's call.
        await pair.call_a.control_methods()["call.hangup"]({})
        await tab_a.wait("meshCall.view === 'ended'")


@pytest.mark.timeout(90)
async def test_accept_audio_only_on_the_page_makes_an_audio_call(tmp_path: Path) -> None:
    async with page_pair(tmp_path) as pair:
        tab_a, tab_b = await pair.open_both()
        await tab_b.wait("meshCall.view === 'incoming'")
        await tab_b.click("#accept-audio")
        await tab_b.wait("meshCall.view === 'incall'")
        await tab_a.wait(f"({INBOUND}).then(s => s.audio > 20)", 30)
        await tab_b.wait(f"({INBOUND}).then(s => s.audio > 20)", 30)
        current = pair.call_b.current()
        assert current is not None and "video" not in current.gates
        # B sends no picture: A's page shows none (not a frame left from an earlier
        # call); B still sees A's camera.
        await tab_a.wait("document.getElementById('remote').hidden === true")
        assert await tab_b.evaluate("document.getElementById('remote').hidden") is False
        await tab_a.key("h")
        await tab_b.wait("meshCall.view === 'ended'")


@pytest.mark.timeout(90)
async def test_a_page_reloaded_mid_call_takes_the_call_over_both_ways(tmp_path: Path) -> None:
    async with calling(tmp_path) as (pair, tab_a, _):
        current = pair.call_b.current()
        assert current is not None and current.sink is not None
        await tab_a.send("Page.reload")
        await tab_a.wait("window.meshCall && meshCall.mediaReady && meshCall.view === 'incall'")
        before = current.sink.video.frames
        await decoding(tab_a, "A's reloaded page")  # the remote video comes back
        sink = current.sink
        for _ in range(200):  # A's camera reaches B again (bounded: a loaded machine)
            if sink.video.frames > before + 10:
                break
            await asyncio.sleep(0.1)
        assert sink.video.frames > before + 10
        assert pair.call_a.current() is not None  # the same call, never dropped


@pytest.mark.timeout(120)
async def test_a_strangers_ring_during_a_page_call_is_a_notice_and_the_page_keeps_its_call(
    tmp_path: Path,
) -> None:
    """The page follows its call by id: a stranger (calling itself "bob", as A's contact
    is called) ringing A mid-call is refused and only noted; the page still shows B's
    call and hangs that one up; the stranger's row names them by key and claim."""
    async with page_pair(tmp_path, stranger="bob") as pair:
        assert pair.c is not None and pair.call_c is not None
        tab_a, tab_b = await in_call(pair)
        current = pair.call_a.current()
        assert current is not None
        ours = current.id
        await pair.call_c.place(pair.a.key.hex(), CallOptions(audio_only=True))
        await tab_a.wait("meshCall.notices.length > 0")
        start = pair.c.key.hex()[:12] + "…" + pair.c.key.hex()[-4:]
        notice = await tab_a.evaluate("meshCall.notices[0].text")
        assert notice == f"{start} (says “bob”): call refused: not a contact", notice
        assert notice in await tab_a.evaluate("document.getElementById('note').textContent")
        assert await tab_a.evaluate("meshCall.view") == "incall"
        assert await tab_a.evaluate("meshCall.call.id") == ours
        assert await tab_a.evaluate("document.getElementById('call-name').textContent") == "bob"
        await decoding(tab_a, "A's page after the stranger's ring")
        # Hang up is the page's own call's.
        await tab_a.evaluate("document.getElementById('hangup').click()")
        await tab_b.wait("meshCall.view === 'ended'")
        await tab_a.wait("meshCall.view === 'ended'")
        assert pair.call_a.current() is None and pair.call_b.current() is None
        log = await pair.call_a.control_methods()["call.log"]({})
        assert {row["id"] for row in log} >= {ours}
        # The recent calls: B as our contact, the stranger by key start and claim.
        await tab_a.click("#back")
        await tab_a.wait("document.querySelectorAll('#log button.call').length >= 2")
        rows = await tab_a.evaluate(
            "[...document.querySelectorAll('#log li')].map(li => [li.children[1].textContent,"
            " li.querySelector('button').dataset.key])"
        )
        assert [f"{start} (says “bob”)", pair.c.key.hex()] in rows, rows
        assert ["bob", pair.b.key.hex()] in rows, rows


@pytest.mark.timeout(120)
async def test_a_page_call_recorded_by_the_callee_to_mp4_is_a_valid_private_file(
    tmp_path: Path,
) -> None:
    """The browser's camera reaches the callee with jitter; the MP4 it records must
    still be readable (it was 48 bytes), and only its owner's."""
    async with page_pair(tmp_path) as pair:
        tab_a = await pair.browser.open(pair.url(pair.call_a, pair.b.key.hex()))
        await press_call(tab_a)
        for _ in range(200):
            ringing = pair.call_b.current()
            if ringing is not None and ringing.state.value == "ringing":
                break
            await asyncio.sleep(0.05)
        recording = tmp_path / "from-the-page.mp4"
        await pair.call_b.control_methods()["call.answer"]({"record_to": str(recording)})
        current = pair.call_b.current()
        assert current is not None and current.sink is not None
        sink = current.sink
        for _ in range(300):  # the browser's camera, 3 s of it
            if sink.video.frames > 60:
                break
            await asyncio.sleep(0.05)
        await pair.call_b.control_methods()["call.hangup"]({})
        status = pair.call_b.control_methods()["call.status"]
        for _ in range(200):  # the summary once the call is finished (recording closed)
            summary = await status({"id": current.id})
            if "recording" in summary:
                break
            await asyncio.sleep(0.05)
    assert summary["recording"]["error"] is None, summary["recording"]
    assert recording.stat().st_mode & 0o777 == 0o600
    with av.open(str(recording)) as container:
        video = sum(1 for _ in container.decode(video=0))
    assert video > 30, video


@pytest.mark.timeout(120)
async def test_the_page_keeps_its_address_and_token_across_a_restart_and_reloads_itself(
    tmp_path: Path,
) -> None:
    async with page_pair(tmp_path) as pair:
        page = pair.call_a.page
        assert page is not None
        url, token, port = page.url_with_token(), page.token, page.port
        kept = pair.call_a.data_dir / PAGE_FILE
        assert kept.stat().st_mode & 0o777 == 0o600 and token in kept.read_text()
        tab = await pair.browser.open(url)
        await tab.wait("window.meshCall && meshCall.mediaReady")
        await tab.evaluate("window.before = 1")
        # `mesh up` stops and starts again: the same address and token.
        await pair.call_a.close()
        await tab.wait("document.getElementById('link').textContent === 'node gone'")
        again = CallService(pair.a, pair.call_a.config, pair.call_a.data_dir)
        await again.start()
        try:
            assert again.page is not None and again.page.url_with_token() == url
            # The open page comes back by itself (a reload, its cookie still good).
            await tab.wait("!window.before && window.meshCall && meshCall.mediaReady", 30)
            # A new token: the open page and old links are refused, the new link works.
            reply = await again.control_methods()["call.page"]({"new_token": True})
            assert again.page.token != token and again.page.port == port
            assert again.page.token in kept.read_text()
            await tab.wait("document.getElementById('note').textContent.includes('replaced')")
            async with aiohttp.ClientSession() as http, http.get(url) as old:
                assert old.status == 403
            fresh = await pair.browser.open(reply["url"])
            await fresh.wait("window.meshCall && meshCall.mediaReady")
        finally:
            await again.close()


@pytest.mark.timeout(120)
async def test_a_call_placed_elsewhere_is_relayed_to_an_open_page_only_when_asked(
    tmp_path: Path,
) -> None:
    """An idle tab costs a `mesh call` nothing: its media reach the page only after the
    page's person presses Watch here."""
    async with page_pair(tmp_path) as pair:
        tab = await pair.browser.open(pair.url(pair.call_a))
        await tab.wait("window.meshCall && meshCall.mediaReady")
        call = await pair.call_a.place(pair.b.key.hex(), CallOptions())  # as `mesh call`
        for _ in range(200):
            ringing = pair.call_b.current()
            if ringing is not None and ringing.state.value == "ringing":
                break
            await asyncio.sleep(0.05)
        await pair.call_b.control_methods()["call.answer"]({})
        await tab.wait("meshCall.view === 'incall' && meshCall.relay === false", 30)
        assert not await tab.evaluate("document.getElementById('watch').hidden")
        page = pair.call_a.page
        assert page is not None
        (server_page,) = page.pages
        assert server_page.bridge.remote["video"].source is None
        await tab.click("#watch")
        await tab.wait("meshCall.relay === true")
        await tab.wait(f"({INBOUND}).then(s => s.video > 10)", 30)
        await pair.call_a.control_methods()["call.hangup"]({"id": call.id})
        await tab.wait("meshCall.view === 'ended'")


@pytest.mark.timeout(120)
async def test_closing_the_tab_that_placed_the_call_leaves_the_call_whole(
    tmp_path: Path,
) -> None:
    """The call's media do not depend on which tab is open: with the placing tab gone
    the peer keeps getting frames (black and silence, as a camera and microphone that
    went away), and a tab opened again sends its camera into the same call."""
    async with page_pair(tmp_path) as pair:
        tab_a = await pair.browser.open(pair.url(pair.call_a, pair.b.key.hex()))
        await press_call(tab_a)
        for _ in range(200):
            ringing = pair.call_b.current()
            if ringing is not None and ringing.state.value == "ringing":
                break
            await asyncio.sleep(0.05)
        await pair.call_b.control_methods()["call.answer"]({})
        current = pair.call_b.current()
        assert current is not None and current.sink is not None
        sink = current.sink
        await tab_a.wait("meshCall.view === 'incall'")
        for _ in range(200):
            if sink.video.frames > 20 and sink.audio.frames > 20:
                break
            await asyncio.sleep(0.05)
        await pair.browser.send("Target.closeTarget", {"targetId": tab_a.target})
        page = pair.call_a.page
        assert page is not None
        for _ in range(200):  # the tab's leg is gone at A's node
            if not page.pages:
                break
            await asyncio.sleep(0.05)
        video, audio = sink.video.frames, sink.audio.frames
        for _ in range(300):
            if sink.video.frames > video + 15 and sink.audio.frames > audio + 25:
                break
            await asyncio.sleep(0.05)
        assert sink.video.frames > video + 15 and sink.audio.frames > audio + 25
        assert pair.call_a.current() is not None and pair.call_b.current() is current
        # Another tab takes the call over: A's camera again.
        again = await pair.browser.open(pair.url(pair.call_a))
        await again.wait("window.meshCall && meshCall.mediaReady && meshCall.view === 'incall'")
        await pair.call_a.control_methods()["call.hangup"]({})
