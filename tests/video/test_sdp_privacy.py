"""The SDP rules: what leaves names only our mesh address; what comes in keeps only the
peer's; malformed SDP is refused with a reason."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.video import sdp
from tests.video.sdp_samples import MESH_A, MESH_B, offer

A = ipaddress.IPv6Address(MESH_A)
B = ipaddress.IPv6Address(MESH_B)
LEAKY = (
    "a=candidate:2 1 udp 2130706431 192.168.1.20 5000 typ host\n"
    "a=candidate:3 1 udp 1694498815 203.0.113.9 6000 typ srflx raddr 10.0.0.2 rport 5000\n"
    "a=candidate:4 1 udp 2130706431 4f2a-99.local 5001 typ host\n"
    "a=candidate:5 1 tcp 2130706431 " + MESH_A + " 5002 typ host tcptype passive\n"
)


def test_outgoing_sdp_names_only_the_own_mesh_address() -> None:
    text = sdp.outgoing(offer(extra=LEAKY), A)
    assert set(sdp.addresses(text)) == {MESH_A}
    assert "192.168" not in text and "10.0.0.2" not in text and ".local" not in text


def test_outgoing_sdp_without_a_mesh_candidate_is_refused() -> None:
    with pytest.raises(sdp.SdpError, match="no candidate on this node's mesh address"):
        sdp.outgoing(offer(host="192.168.1.20"), A)


def test_incoming_sdp_keeps_only_candidates_on_the_signaling_peer() -> None:
    got = sdp.incoming(offer(extra=LEAKY), A)
    assert set(sdp.addresses(got.sdp)) == {MESH_A}
    assert got.media == ("audio", "video")
    assert "192.168.1.20 5000" in got.dropped and "4f2a-99.local 5001" in got.dropped


def test_incoming_sdp_from_another_mesh_address_is_refused() -> None:
    with pytest.raises(sdp.SdpError, match="no candidate on the caller's mesh address"):
        sdp.incoming(offer(host=MESH_A), B)


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda s: s.replace("v=0", "v=1"), "must start with v=0"),
        (lambda s: s.replace("a=group:BUNDLE 0 1\r\n", ""), "not bundled"),
        (lambda s: s.replace("a=ice-pwd:YDM9YAKLLb9SQzpayVWTok\r\n", ""), "lacks a=ice-pwd"),
        (lambda s: s.replace("m=video", "m=application"), "unsupported media"),
        (lambda s: s + "x" * 20000, "larger than"),
        (lambda s: s.replace("typ host", "typ"), "malformed candidate"),
        (lambda s: s.replace("a=sendrecv", "a=send\x00recv"), "malformed SDP line"),
        (lambda s: s.replace("40000 typ", "99999 typ"), "out of range"),
    ],
)
def test_mangled_sdp_is_refused_with_a_reason(mangle: object, reason: str) -> None:
    with pytest.raises(sdp.SdpError, match=reason):
        sdp.incoming(mangle(offer()), A)  # type: ignore[operator]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=3000), st.integers(min_value=0, max_value=3000))
def test_random_damage_to_sdp_never_escapes_as_anything_but_sdp_error(junk: str, cut: int) -> None:
    text = offer()
    damaged = text[:cut] + junk + text[cut:]
    try:
        got = sdp.incoming(damaged, A)
    except sdp.SdpError:
        return
    assert set(sdp.addresses(got.sdp)) <= {MESH_A}
