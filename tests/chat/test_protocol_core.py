"""The sans-IO chat protocol: envelope vectors, canonical decoding, frames, the checks
in their order, and a pair of connections wired to each other."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.chat.checks import Context, Refusal, check
from apps.chat.connection import (
    AckReceived,
    ChatConnection,
    ConnState,
    EnvelopeReceived,
    MalformedEnvelope,
    ProtocolFault,
)
from apps.chat.envelope import DOMAIN, MAX_BODY, Envelope, EnvelopeError, Kind
from apps.chat.wire import MAX_PAYLOAD, FrameError, FrameParser, FrameType, encode_frame
from core.address import address_for_key
from core.identity import Identity

VECTORS = json.loads((Path(__file__).parent / "vectors" / "envelopes.json").read_text())["vectors"]
A = Identity.from_seed(bytes(range(32)))
B = Identity.from_seed(bytes(range(32, 64)))
APP = Identity.from_seed(bytes([7]) * 32)
NOW = 1_780_000_000.0
DAY = 86400.0


def envelope(**kw: object) -> Envelope:
    args: dict[str, object] = {
        "sender": A.public_key,
        "signer": A.public_key,
        "recipient": B.public_key,
        "sent_ms": int(NOW * 1000),
        "body": b"hi",
        "sign": A.sign,
    }
    args.update(kw)
    return Envelope.build(Kind.TEXT, **args)  # type: ignore[arg-type]


def ctx(**kw: object) -> Context:
    args: dict[str, object] = {
        "source": address_for_key(A.public_key),
        "own_key": B.public_key,
        "pinned": None,
        "seen": False,
        "now": NOW,
        "expiry": 30 * DAY,
    }
    args.update(kw)
    return Context(**args)  # type: ignore[arg-type]


# -- vectors ----------------------------------------------------------------------------
@pytest.mark.parametrize("vec", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_encodes_signs_and_decodes_byte_exact(vec: dict[str, object]) -> None:
    signer = Identity.from_seed(bytes.fromhex(str(vec["signer_seed"])))
    reply = vec["reply_to"]
    env = Envelope.build(
        Kind(int(str(vec["kind"]))),
        sender=bytes.fromhex(str(vec["sender"])),
        signer=signer.public_key,
        recipient=bytes.fromhex(str(vec["recipient"])),
        sent_ms=int(str(vec["sent_ms"])),
        body=bytes.fromhex(str(vec["body"])),
        sign=signer.sign,
        reply_to=bytes.fromhex(str(reply)) if reply else None,
        id=bytes.fromhex(str(vec["id"])),
    )
    assert env.signed_bytes().hex() == vec["signed_bytes"]
    assert env.signed_bytes().startswith(DOMAIN)
    assert env.signature.hex() == vec["signature"]
    assert bytes(env).hex() == vec["envelope"]
    parsed = Envelope.parse(bytes.fromhex(str(vec["envelope"])))
    assert parsed == env and parsed.verify()


def test_signature_without_the_domain_prefix_does_not_verify() -> None:
    env = envelope()
    bare = env.with_signature(A.sign(env.unsigned_bytes()))
    assert env.verify() and not bare.verify()


# -- decoding ---------------------------------------------------------------------------
def test_decoder_refuses_trailing_bytes_unknown_kind_flags_and_bad_utf8() -> None:
    raw = bytes(envelope())
    with pytest.raises(EnvelopeError, match="does not match"):
        Envelope.parse(raw + b"x")
    with pytest.raises(EnvelopeError, match="unknown envelope kind"):
        Envelope.parse(raw[:1] + b"\x09" + raw[2:])
    with pytest.raises(EnvelopeError, match="flags"):
        Envelope.parse(raw[:122] + b"\x80" + raw[123:])
    bad = envelope(body=b"ok")
    broken = bytes(bad).replace(b"\x00\x00\x00\x02ok", b"\x00\x00\x00\x02\xff\xfe")
    with pytest.raises(EnvelopeError, match="UTF-8"):
        Envelope.parse(broken)


def test_body_over_the_limit_cannot_be_built() -> None:
    with pytest.raises(EnvelopeError, match="at most"):
        envelope(body=b"x" * (MAX_BODY + 1))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_envelope_decoder_raises_only_envelope_error_on_any_bytes(data: bytes) -> None:
    try:
        env = Envelope.parse(data)
    except EnvelopeError:
        return
    assert bytes(env) == data  # what decodes re-encodes to the same bytes (canonical)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=MAX_BODY // 4), st.booleans())
def test_any_valid_envelope_round_trips(body: bytes, reply: bool) -> None:
    text = body.decode(errors="replace").encode()[:MAX_BODY]
    text = text.decode(errors="ignore").encode()
    env = envelope(body=text, reply_to=bytes(16) if reply else None)
    assert Envelope.parse(bytes(env)) == env


# -- frames -----------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8), st.integers(1, 50))
def test_frame_parser_reassembles_any_split(payloads: list[bytes], chunk: int) -> None:
    stream = b"".join(encode_frame(FrameType.ENVELOPE, p) for p in payloads)
    parser = FrameParser()
    got = []
    for i in range(0, len(stream), chunk):
        got.extend(parser.feed(stream[i : i + chunk]))
    assert [f.payload for f in got] == payloads and parser.buffered == 0


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_frame_parser_raises_only_frame_error_and_stays_bounded(data: bytes) -> None:
    parser = FrameParser()
    try:
        parser.feed(data)
    except FrameError as exc:
        assert exc.code in ("bad-version", "garbage", "oversize")
    assert parser.buffered <= MAX_PAYLOAD + 6


def test_oversize_header_is_refused_before_the_payload_arrives() -> None:
    with pytest.raises(FrameError, match="over the limit") as info:
        FrameParser().feed(struct.pack(">BBI", 1, 1, MAX_PAYLOAD + 1))
    assert info.value.code == "oversize"


# -- checks in order --------------------------------------------------------------------
def test_accepts_a_good_message_and_pins_an_app_key_on_first_use() -> None:
    assert check(envelope(), ctx()).ok
    verdict = check(envelope(signer=APP.public_key, sign=APP.sign), ctx())
    assert verdict.ok and verdict.pin


@pytest.mark.parametrize(
    ("env_kw", "ctx_kw", "refusal"),
    [
        ({}, {"source": address_for_key(B.public_key)}, Refusal.FORGED_SENDER),
        ({"sign": B.sign}, {}, Refusal.BAD_SIGNATURE),
        (
            {"signer": APP.public_key, "sign": APP.sign},
            {"pinned": B.public_key},
            Refusal.KEY_CHANGED,
        ),
        ({"recipient": A.public_key}, {}, Refusal.NOT_FOR_ME),
        ({}, {"seen": True}, Refusal.REPLAY),
        ({"sent_ms": 0}, {}, Refusal.NO_TIMESTAMP),
        ({"sent_ms": int((NOW - 31 * DAY) * 1000)}, {}, Refusal.STALE),
        ({"sent_ms": int((NOW + 3600) * 1000)}, {}, Refusal.STALE),
    ],
)
def test_each_check_refuses_with_its_own_code(
    env_kw: dict[str, object], ctx_kw: dict[str, object], refusal: Refusal
) -> None:
    assert check(envelope(**env_kw), ctx(**ctx_kw)).refusal is refusal


def test_checks_run_in_the_issue_order() -> None:
    everything_wrong = envelope(recipient=A.public_key, sent_ms=0, sign=B.sign)
    order: list[tuple[dict[str, object], Refusal]] = [
        ({"source": address_for_key(B.public_key), "seen": True}, Refusal.FORGED_SENDER),
        ({"seen": True}, Refusal.BAD_SIGNATURE),
    ]
    for kw, refusal in order:
        assert check(everything_wrong, ctx(**kw)).refusal is refusal
    signed = envelope(recipient=A.public_key, sent_ms=0)
    assert check(signed, ctx(seen=True)).refusal is Refusal.NOT_FOR_ME
    assert check(envelope(sent_ms=0), ctx(seen=True)).refusal is Refusal.REPLAY


# -- a connection pair ------------------------------------------------------------------
def test_pipelined_envelopes_are_acknowledged_in_order() -> None:
    client, server = ChatConnection(), ChatConnection()
    envs = [envelope(body=f"m{i}".encode()) for i in range(5)]
    wire = b"".join(client.send_envelope(bytes(e), e.id) for e in envs)
    events = server.receive_data(wire)
    assert [e.envelope for e in events if isinstance(e, EnvelopeReceived)] == envs
    acks = b"".join(server.send_ack(e.id, Refusal.OK) for e in envs)
    got = client.receive_data(acks)
    assert [a.ack.id for a in got if isinstance(a, AckReceived)] == [e.id for e in envs]
    assert client.in_flight == 0


def test_garbage_inside_a_frame_is_malformed_and_the_stream_goes_on() -> None:
    server = ChatConnection()
    events = server.receive_data(encode_frame(FrameType.ENVELOPE, b"junk"))
    assert isinstance(events[0], MalformedEnvelope) and server.state is ConnState.OPEN


def test_garbage_framing_puts_the_connection_in_error_with_one_reply() -> None:
    server = ChatConnection()
    events = server.receive_data(b"GET / HTTP/1.1\r\n\r\n")
    assert isinstance(events[0], ProtocolFault) and events[0].refusal is Refusal.BAD_VERSION
    assert server.state is ConnState.ERROR and server.receive_data(b"more") == []
