"""Signaling frames and the call state table, without I/O."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.video import signaling as sig

CALL = "0123456789abcdef0123456789abcdef"


def test_every_frame_round_trips_through_the_codec() -> None:
    frames: list[sig.Frame] = [
        sig.CallFrame(CALL, "v=0\r\n", ("audio", "video"), "ana"),
        sig.Ringing(CALL),
        sig.Accept(CALL, "v=0\r\n"),
        sig.Reject(CALL, "busy"),
        sig.Hangup(CALL, "no-answer"),
        sig.Keepalive(CALL),
        sig.Update(CALL, audio_muted=True, source="testsrc"),
    ]
    a, b = sig.SignalingConnection(), sig.SignalingConnection()
    wire = b"".join(a.send(f) for f in frames)
    for i in range(0, len(wire), 7):  # arbitrary split points
        b.receive_data(wire[i : i + 7])
    got = []
    while (frame := b.next_event()) is not None:
        got.append(frame)
    assert got == frames


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ({"v": 2, "type": "ringing", "call": CALL}, "unsupported signaling version"),
        ({"v": 1, "type": "dance", "call": CALL}, "unknown frame type"),
        ({"v": 1, "type": "ringing", "call": "x"}, "32 lowercase hex"),
        ({"v": 1, "type": "reject", "call": CALL, "reason": "meh"}, "must be one of"),
        ({"v": 1, "type": "call", "call": CALL, "sdp": "v=0", "media": []}, "'media'"),
        ({"v": 1, "type": "call", "call": CALL, "sdp": 5, "media": ["audio"]}, "string"),
        ({"v": 1, "type": "update", "call": CALL, "audio_muted": "yes"}, "true or false"),
        ([1, 2], "JSON object"),
    ],
)
def test_malformed_frames_are_refused_with_a_reason(obj: object, reason: str) -> None:
    with pytest.raises(sig.RemoteProtocolError, match=reason):
        sig.decode_frame(json.dumps(obj).encode())


def test_an_endless_line_is_a_remote_error_and_the_connection_stays_broken() -> None:
    conn = sig.SignalingConnection()
    with pytest.raises(sig.RemoteProtocolError, match="exceeds"):
        conn.receive_data(b"{" * (sig.MAX_FRAME_BYTES + 1))
    with pytest.raises(sig.RemoteProtocolError):
        conn.receive_data(b"\n")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_fuzzed_bytes_give_frames_or_remote_errors_only(data: bytes) -> None:
    conn = sig.SignalingConnection()
    try:
        conn.receive_data(data + b"\n")
        while conn.next_event() is not None:
            pass
    except sig.RemoteProtocolError:
        pass


def test_the_caller_runs_dialing_ringing_connecting_active_ended() -> None:
    seen: list[tuple[str, str]] = []
    m = sig.CallMachine(sig.Role.CALLER, on_change=lambda o, n: seen.append((o.value, n.value)))
    for trigger in (sig.Trigger.RINGING, sig.Trigger.ANSWER, sig.Trigger.MEDIA_UP):
        m.fire(trigger)
    m.fire(sig.Trigger.HANGUP)
    assert seen == [
        ("dialing", "ringing"),
        ("ringing", "connecting"),
        ("connecting", "active"),
        ("active", "ended"),
    ]
    assert m.answered


def test_transitions_outside_the_table_are_refused() -> None:
    m = sig.CallMachine(sig.Role.CALLEE)
    with pytest.raises(sig.LocalProtocolError, match="cannot take media-up"):
        m.fire(sig.Trigger.MEDIA_UP)
    m.fire(sig.Trigger.ANSWER)
    assert not m.can(sig.Trigger.REJECT)  # an answered call is hung up, not rejected
    m.fire(sig.Trigger.FAIL)
    assert not m.can(sig.Trigger.HANGUP)  # ended is final
