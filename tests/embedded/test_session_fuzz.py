"""Garbage into every session decoder: a ValueError or a silent drop, never a crash."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.embedded import crypto
from core.embedded.session import (
    SESSION_INIT_SIZE,
    SessionInit,
    SessionManager,
    Transmit,
    decode_uvarint,
)
from core.identity import Identity

ALICE = Identity.from_seed(bytes(range(32)))
BOB = Identity.from_seed(bytes(range(1, 33)))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=12), st.integers(min_value=0, max_value=12))
def test_uvarint_garbage(data: bytes, offset: int) -> None:
    try:
        value, end = decode_uvarint(data, offset)
    except ValueError:
        return
    assert 0 <= value < 2**64 and offset < end <= len(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=SESSION_INIT_SIZE, max_size=SESSION_INIT_SIZE))
def test_init_decrypt_garbage(data: bytes) -> None:
    try:
        SessionInit.decrypt(crypto.ed25519_private_to_x25519(BOB.seed), ALICE.public_key, data)
    except ValueError:
        return
    raise AssertionError("random bytes decrypted as a signed init")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=300),
            st.tuples(st.sampled_from([0, 1, 2, 3, 4, 255]), st.binary(max_size=250)).map(
                lambda t: bytes([t[0]]) + t[1]
            ),
        ),
        max_size=6,
    )
)
def test_manager_survives_garbage_with_and_without_session(packets: list[bytes]) -> None:
    now = [100.0]
    a = SessionManager(ALICE.seed, clock=lambda: now[0], wallclock=lambda: 1e9)
    b = SessionManager(BOB.seed, clock=lambda: now[0], wallclock=lambda: 1e9)
    for data in packets:  # no session yet
        b.handle_data(ALICE.public_key, data)
    a.write_to(BOB.public_key, b"hi")
    for _ in range(4):  # set a session up
        for src, dst, key in ((a, b, ALICE.public_key), (b, a, BOB.public_key)):
            for event in src.events():
                if isinstance(event, Transmit):
                    dst.handle_data(key, event.data)
    assert b.has_session(ALICE.public_key)
    for data in packets:  # with a session
        b.handle_data(ALICE.public_key, data)
        b.handle_data(b"short", data)
    for event in b.events():
        assert isinstance(event, Transmit) or event.data == b"hi"
