"""An incoming call rings where the person is: a desktop notification over a real
session D-Bus (Accept opens the call page, which shows the call ringing; Reject rejects
it; it goes away when the call stops ringing) and an ``attention`` event, which
``mesh up`` prints with a terminal bell."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from apps.video.call import CallOptions
from tests.core.dbus_session import session_bus
from tests.video.helpers import method, trusted_pair
from tests.video.mesh import eventually
from tests.video.procs import NodeUp, run_mesh, spawn_mesh

pytestmark = pytest.mark.timeout(120)


async def test_a_call_rings_on_the_desktop_reject_and_accept_work_from_its_buttons(
    tmp_path: Path,
) -> None:
    async with session_bus(tmp_path) as desk, trusted_pair(tmp_path) as (pa, pb):
        opened: list[str] = []

        async def open_page(url: str) -> None:
            opened.append(url)

        pb.service.ringer.opener = open_page
        # Reject from the notification.
        await pa.service.place(pb.node.key.hex(), CallOptions(audio_only=True))
        await desk.wait(lambda: len(desk.shown) == 1)
        shown = desk.shown[0]
        assert shown["summary"] == "Incoming call"
        assert shown["body"].startswith("a (") and "(audio only)" in shown["body"]
        assert shown["actions"] == ["accept", "Accept", "reject", "Reject"]
        assert shown["hints"]["sound-name"] == ("s", "phone-incoming-call")
        attention = [e for e in pb.events if e.kind == "attention"]
        assert attention and attention[0].data["title"] == "incoming call (audio only)"
        assert "mesh call answer" in attention[0].data["text"]
        await desk.press(shown["id"], "reject")
        ended = await pa.wait_event("call.ended")
        assert ended["result"] == "rejected"
        # Accept opens the page (where the call shows ringing, to be answered there; the
        # server closes a notification whose button was pressed).
        pa.events.clear()
        await pa.service.place(pb.node.key.hex(), CallOptions(audio_only=True))
        await desk.wait(lambda: len(desk.shown) == 2)
        await desk.press(desk.shown[1]["id"], "accept")
        await eventually("the page opened", lambda: bool(opened))
        assert pb.service.page is not None and opened == [pb.service.page.url_with_token()]
        await method(pb, "call.answer")
        await method(pa, "call.hangup")


async def test_a_call_that_stops_ringing_takes_its_notification_away(tmp_path: Path) -> None:
    async with session_bus(tmp_path) as desk, trusted_pair(tmp_path) as (pa, pb):
        await pa.service.place(pb.node.key.hex(), CallOptions(audio_only=True))
        await desk.wait(lambda: len(desk.shown) == 1)
        await method(pa, "call.hangup")  # the caller gives up: missed
        await desk.wait(lambda: desk.closed == [desk.shown[0]["id"]])


def test_mesh_up_in_the_foreground_rings_with_a_line_and_a_bell(tmp_path: Path) -> None:
    a = NodeUp(tmp_path / "a", "--listen", "tcp://127.0.0.1:0")
    try:
        b = NodeUp(tmp_path / "b", "--peer", a.status["backend_status"]["listening"][0])
        try:
            for _ in range(30):
                if run_mesh(b.data, "ping", "-c", "1", "-W", "1", a.status["key"]).returncode == 0:
                    break
            caller = spawn_mesh(b.data, "call", a.status["key"], "--audio-only", "--json")
            try:
                for _ in range(200):
                    if "\aincoming call" in a.logfile.read_text():
                        break
                    time.sleep(0.05)
                text = a.logfile.read_text()
                line = next(x for x in text.splitlines() if "incoming call" in x)
                assert line.startswith("\aincoming call (audio only): from "), line
                assert b.status["key"][:16] in line and "mesh call answer" in line
            finally:
                run_mesh(a.data, "call", "reject")
                caller.communicate(timeout=30)
        finally:
            b.stop()
    finally:
        a.stop()
