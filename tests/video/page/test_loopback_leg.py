"""The node's side of the page's WebRTC leg: loopback only, whatever the browser offers."""

from __future__ import annotations

import aioice
import pytest

from apps.video.page.bridge import LoopbackIce, loopback_only
from apps.video.page.server import parse_page_setting, scrub
from core import UsageError

BROWSER_OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 1 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "c=IN IP4 192.168.1.20",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=candidate:1 1 udp 2122260223 192.168.1.20 50001 typ host generation 0",
        "a=candidate:2 1 udp 2122260223 3f1c2a9e-0b1d.local 50002 typ host generation 0",
        "a=candidate:3 1 udp 2122260223 127.0.0.1 50003 typ host generation 0",
        "a=candidate:4 1 udp 2122260223 ::1 50004 typ host generation 0",
        "a=candidate:5 1 udp 1686052607 203.0.113.7 50005 typ srflx raddr 127.0.0.1 rport 1",
        "a=candidate:6 1 udp 2122260223 fe80::1 50006 typ host generation 0",
        "",
    ]
)


def test_the_browser_offer_keeps_only_loopback_candidates() -> None:
    text, dropped = loopback_only(BROWSER_OFFER)
    candidates = [line.split()[4] for line in text.splitlines() if line.startswith("a=candidate")]
    assert candidates == ["127.0.0.1", "::1"]
    assert "192.168.1.20" not in text and ".local" not in text and "203.0.113.7" not in text
    assert "c=IN IP4 127.0.0.1" in text
    assert len(dropped) == 4


@pytest.mark.parametrize("bad", ["", "hello", "v=0" + "x" * 70_000])
def test_something_that_is_not_an_sdp_is_refused(bad: str) -> None:
    with pytest.raises(UsageError):
        loopback_only(bad)


async def test_the_node_side_gathers_only_127_0_0_1_and_ignores_other_candidates() -> None:
    ice = LoopbackIce(ice_controlling=False, components=1)
    try:
        await ice.gather_candidates()
        assert [c.host for c in ice.local_candidates] == ["127.0.0.1"]
        assert ice.local_candidates[0].type == "host"
        for host in ("192.168.1.20", "x.local", "fe80::1"):
            cand = aioice.Candidate("1", 1, "udp", 1, host, 5000, "host")
            await ice.add_remote_candidate(cand)
        loopback = aioice.Candidate("1", 1, "udp", 1, "127.0.0.1", 5000, "host")
        await ice.add_remote_candidate(loopback)
        assert [c.host for c in ice.remote_candidates] == ["127.0.0.1"]
        assert ice.dropped == ["192.168.1.20", "x.local", "fe80::1"]
    finally:
        await ice.close()


def test_the_page_setting_takes_127_0_0_1_port_or_off() -> None:
    assert parse_page_setting("127.0.0.1:8590") == 8590
    assert parse_page_setting("127.0.0.1:0") == 0
    assert parse_page_setting("off") is None
    for bad in ("0.0.0.0:8590", "[::]:8590", "8590", "127.0.0.1:99999", "localhost:1"):
        with pytest.raises(UsageError):
            parse_page_setting(bad)


def test_what_the_page_sees_has_no_mesh_address_or_candidates() -> None:
    summary = {
        "id": "x",
        "address": "200:1::1",
        "local_candidates": ["200:1::1"],
        "remote_candidates": ["200:2::2"],
        "dropped_candidates": ["10.0.0.1 5"],
        "nested": [{"address": "200:2::2", "ok": 1}],
    }
    assert scrub(summary) == {"id": "x", "nested": [{"ok": 1}]}
