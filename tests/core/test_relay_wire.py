"""The relay's wire format and sealing: canonical frames, bounded decoding, sealed items
that only the recipient opens and that name their real sender, signed records."""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.identity import Identity
from core.relay.sealing import (
    RecordKind,
    SealError,
    item_id,
    seal,
    sign_record,
    unseal,
    verify_record,
)
from core.relay.wire import (
    MAX_FRAME,
    Answer,
    Code,
    Delete,
    Done,
    Fetch,
    FrameDecoder,
    FrameType,
    Item,
    Notify,
    RecordRequest,
    Submit,
    WireError,
    encode,
)

ALICE, BOB, MALLORY = Identity.generate(), Identity.generate(), Identity.generate()


def roundtrip(msg: object) -> object:
    [back] = FrameDecoder().feed(encode(msg))  # type: ignore[arg-type]
    return back


@pytest.mark.parametrize(
    "msg",
    [
        Submit(b"\x01" * 32, b"\x02" * 16, b"sealed"),
        Fetch(64, 1 << 20),
        Delete((b"\x03" * 16, b"\x04" * 16)),
        Notify(7),
        Answer(Code.RECIPIENT_FULL, "full: 3 items"),
        Item(b"\x05" * 16, 1_700_000_000_000, b"blob"),
        Done(3),
        RecordRequest(FrameType.ENROLL, b"record"),
    ],
)
def test_every_message_survives_its_frame(msg: object) -> None:
    assert roundtrip(msg) == msg


def test_the_wire_example_in_the_docs() -> None:
    frame = encode(Answer(Code.NOT_ENROLLED, "no"))
    assert frame.hex() == "00000004" + "80" + "15" + "6e6f"


def test_frames_split_anywhere_decode_the_same() -> None:
    data = encode(Notify(1)) + encode(Submit(b"\x01" * 32, b"\x02" * 16, b"x" * 1000))
    for cut in range(0, len(data) + 1, 37):
        decoder = FrameDecoder()
        got = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
        assert [type(m) for m in got] == [Notify, Submit]


def test_a_frame_longer_than_the_limit_is_refused_before_it_is_buffered() -> None:
    decoder = FrameDecoder()
    with pytest.raises(WireError, match="at most"):
        decoder.feed((MAX_FRAME + 1).to_bytes(4, "big") + b"\x03")
    assert FrameDecoder(max_frame=100).feed((50).to_bytes(4, "big")) == []


@pytest.mark.parametrize(
    "payload",
    [b"\x03" + b"\x01" * 48, b"\x04\x00", b"\x05" + b"\x00" * 15, b"\x06", b"\x80", b"\x7f"],
)
def test_malformed_payloads_are_wire_errors(payload: bytes) -> None:
    with pytest.raises(WireError):
        FrameDecoder().feed(len(payload).to_bytes(4, "big") + payload)


@given(st.binary(max_size=300))
def test_garbage_never_raises_anything_but_wire_error(data: bytes) -> None:
    with contextlib.suppress(WireError):
        FrameDecoder(max_frame=4096).feed(data)


def test_unknown_codes_keep_their_class() -> None:
    assert Code.parse(17).temporary and not Code.parse(29).temporary
    assert Code.RECIPIENT_FULL.temporary and not Code.NOT_ENROLLED.temporary


def test_only_the_recipient_opens_a_sealed_item_and_learns_the_sender() -> None:
    body = os.urandom(5000)
    blob = seal(ALICE, BOB.public_key, "chat", "ab" * 16, body)
    assert body not in blob and b"chat" not in blob and ALICE.public_key not in blob
    opened = unseal(BOB, blob)
    assert (opened.sender, opened.app, opened.ref, opened.body) == (
        ALICE.public_key,
        "chat",
        "ab" * 16,
        body,
    )
    with pytest.raises(SealError, match="does not open"):
        unseal(MALLORY, blob)


def test_a_sealed_item_cannot_claim_another_sender() -> None:
    # Mallory seals with her key but writes Alice's key as the sender: the signature fails.
    from nacl.bindings import crypto_sign_ed25519_pk_to_curve25519
    from nacl.public import PublicKey, SealedBox

    inner = b"\x01" + ALICE.public_key + b"\x04chat\x02id" + b"hi"
    forged = inner + MALLORY.sign(b"meshsuite/relay/seal/v1\x00" + BOB.public_key + inner)
    box = SealedBox(PublicKey(crypto_sign_ed25519_pk_to_curve25519(BOB.public_key)))
    with pytest.raises(SealError, match="signature"):
        unseal(BOB, bytes(box.encrypt(forged)))


def test_a_sealed_item_meant_for_someone_else_does_not_verify_when_resealed() -> None:
    # Bob opens an item from Alice and re-seals its inside to Mallory: it names Bob.
    from nacl.bindings import (
        crypto_sign_ed25519_pk_to_curve25519,
        crypto_sign_ed25519_sk_to_curve25519,
    )
    from nacl.public import PrivateKey, PublicKey, SealedBox

    blob = seal(ALICE, BOB.public_key, "chat", "r1", b"for bob")
    inner = SealedBox(
        PrivateKey(crypto_sign_ed25519_sk_to_curve25519(BOB.seed + BOB.public_key))
    ).decrypt(blob)
    to_mallory = SealedBox(PublicKey(crypto_sign_ed25519_pk_to_curve25519(MALLORY.public_key)))
    with pytest.raises(SealError, match="signature"):
        unseal(MALLORY, bytes(to_mallory.encrypt(inner)))


def test_item_ids_are_stable_per_message_and_reveal_nothing() -> None:
    one = item_id(ALICE.public_key, BOB.public_key, "chat", "r1")
    assert one == item_id(ALICE.public_key, BOB.public_key, "chat", "r1")
    assert one != item_id(ALICE.public_key, BOB.public_key, "chat", "r2")
    assert one != item_id(ALICE.public_key, BOB.public_key, "mail", "r1")
    assert len(one) == 16


def test_records_verify_and_refuse_any_change() -> None:
    relays = [BOB.public_key, MALLORY.public_key]
    data = sign_record(ALICE, RecordKind.ANNOUNCE, 1234, relays)
    record = verify_record(data)
    assert (record.kind, record.owner, record.time_ms, list(record.keys)) == (
        RecordKind.ANNOUNCE,
        ALICE.public_key,
        1234,
        relays,
    )
    for at in range(0, len(data), 11):
        bad = bytearray(data)
        bad[at] ^= 1
        with pytest.raises(SealError):
            verify_record(bytes(bad))
    with pytest.raises(SealError):
        verify_record(data[:-1])


def test_a_peers_reason_arrives_escaped() -> None:
    frame = encode(Answer(Code.BUSY, "full\x1b[2J\u202eevil\nline"))
    [answer] = FrameDecoder().feed(frame)
    assert isinstance(answer, Answer)
    assert "\x1b" not in answer.reason and "\u202e" not in answer.reason
    assert "\n" not in answer.reason and "\\x1b" in answer.reason


async def test_unfinished_frames_of_all_streams_share_one_budget() -> None:
    import asyncio

    from core.relay.link import ByteBudget, FrameStream

    budget = ByteBudget(1000)

    class Sink:
        def write(self, data: bytes) -> None: ...

    def stream(data: bytes) -> FrameStream:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        return FrameStream(reader, Sink(), timeout=0.2, budget=budget)  # type: ignore[arg-type]

    big = encode(Submit(b"\x01" * 32, b"\x02" * 16, b"x" * 700))
    one = stream(big[:600])  # an unfinished frame: 600 bytes held
    with pytest.raises(TimeoutError):
        await one.receive()
    assert budget.used == 600
    two = stream(big[:600])  # a second one does not fit beside it
    with pytest.raises(WireError, match="too much"):
        await two.receive()
    await two.close()
    await one.close()
    assert budget.used == 0
    three = stream(big)  # whole frames pass and hold nothing afterwards
    assert isinstance(await three.receive(), Submit)
    assert budget.used == 0
