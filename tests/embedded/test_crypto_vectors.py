"""Ed25519→X25519 conversion and boxes, checked against libsodium."""

from __future__ import annotations

import os

import nacl.bindings as sodium
import nacl.exceptions
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.embedded import crypto
from core.identity import Identity


def clamp(scalar: bytes) -> bytes:
    raw = bytearray(scalar)
    raw[0] &= 248
    raw[31] &= 127
    raw[31] |= 64
    return bytes(raw)


@pytest.mark.parametrize("_", range(64))
def test_conversion_matches_libsodium(_: int) -> None:
    ident = Identity.generate()
    pub = ident.public_key
    assert crypto.ed25519_public_to_x25519(pub) == sodium.crypto_sign_ed25519_pk_to_curve25519(pub)
    ours = crypto.ed25519_private_to_x25519(ident.seed)
    theirs = sodium.crypto_sign_ed25519_sk_to_curve25519(ident.seed + pub)
    # ironwood keeps SHA-512(seed)[:32] unclamped; libsodium clamps. X25519 clamps anyway.
    assert clamp(ours) == theirs
    assert sodium.crypto_scalarmult_base(ours) == crypto.ed25519_public_to_x25519(pub)


def test_fixed_vector_rfc8032_key() -> None:
    # RFC 8032 test 1 key; the X25519 values are what libsodium gives for it.
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    pub = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    assert Identity.from_seed(seed).public_key == pub
    assert (
        crypto.ed25519_public_to_x25519(pub).hex()
        == sodium.crypto_sign_ed25519_pk_to_curve25519(pub).hex()
    )
    ours = crypto.ed25519_private_to_x25519(seed)
    assert ours.hex() == "357c83864f2833cb427a2ef1c00a013cfdff2768d980c0a3a520f006904de90f"
    clamped = "307c83864f2833cb427a2ef1c00a013cfdff2768d980c0a3a520f006904de94f"
    assert clamp(ours).hex() == clamped
    assert sodium.crypto_sign_ed25519_sk_to_curve25519(seed + pub).hex() == clamped


def test_odd_keys_follow_e2c_not_libsodium() -> None:
    # y = 1 (the identity point): e2c's ModInverse(0) leaves 0, so u = 0. libsodium refuses.
    identity_point = (1).to_bytes(32, "little")
    assert crypto.ed25519_public_to_x25519(identity_point) == bytes(32)
    with pytest.raises(nacl.exceptions.RuntimeError):
        sodium.crypto_sign_ed25519_pk_to_curve25519(identity_point)
    # The sign bit is ignored, as e2c masks it.
    key = Identity.generate().public_key
    flipped = key[:31] + bytes([key[31] ^ 0x80])
    assert crypto.ed25519_public_to_x25519(flipped) == crypto.ed25519_public_to_x25519(key)
    with pytest.raises(ValueError):
        crypto.ed25519_public_to_x25519(b"short")


def test_box_round_trip_and_layout() -> None:
    a_pub, a_priv = crypto.new_box_keys()
    b_pub, b_priv = crypto.new_box_keys()
    shared = crypto.box_shared(b_pub, a_priv)
    assert shared == crypto.box_shared(a_pub, b_priv)
    sealed = crypto.box_seal(b"hello", 5, shared)
    assert len(sealed) == 5 + crypto.BOX_OVERHEAD
    # Same bytes as libsodium's crypto_box_easy with the nonce layout of nonceForUint64.
    nonce = bytes(16) + (5).to_bytes(8, "big")
    assert crypto.nonce_for_uint64(5) == nonce
    assert sealed == sodium.crypto_box_easy(b"hello", nonce, b_pub, a_priv)
    assert crypto.box_open(sealed, 5, shared) == b"hello"
    assert crypto.box_open(sealed, 6, shared) is None
    tampered = bytes([sealed[0] ^ 1]) + sealed[1:]
    assert crypto.box_open(tampered, 5, shared) is None
    assert crypto.box_open(b"short", 5, shared) is None
    with pytest.raises(ValueError):
        crypto.nonce_for_uint64(2**64)


def test_box_between_converted_identity_keys() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    eph_pub, eph_priv = crypto.new_box_keys()
    to_bob = crypto.box_shared(crypto.ed25519_public_to_x25519(bob.public_key), eph_priv)
    at_bob = crypto.box_shared(eph_pub, crypto.ed25519_private_to_x25519(bob.seed))
    assert to_bob == at_bob
    sig = crypto.ed_sign(b"msg", alice.seed)
    assert crypto.ed_verify(b"msg", sig, alice.public_key)
    assert not crypto.ed_verify(b"msh", sig, alice.public_key)
    assert not crypto.ed_verify(b"msg", sig[:63], alice.public_key)


def test_low_order_keys_are_refused() -> None:
    assert not crypto.is_usable_box_key(bytes(32))
    assert not crypto.is_usable_box_key((1).to_bytes(32, "little"))
    assert crypto.is_usable_box_key(crypto.new_box_keys()[0])
    _, priv = crypto.new_box_keys()
    with pytest.raises(ValueError):
        crypto.box_shared(bytes(32), priv)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_public_conversion_never_crashes(key: bytes) -> None:
    assert len(crypto.ed25519_public_to_x25519(key)) == 32


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=2**64 - 1))
def test_box_open_garbage(data: bytes, nonce: int) -> None:
    assert crypto.box_open(data, nonce, os.urandom(32)) is None
