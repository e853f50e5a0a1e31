"""Key conversion and NaCl boxes exactly as ironwood's ``encrypted/crypto.go`` uses them.

ironwood signs with Ed25519 and encrypts with NaCl ``box`` (X25519 + XSalsa20-Poly1305).
A node's long-term box key is derived from its Ed25519 key the way
``encrypted/internal/e2c/e2c.go`` (after filippo.io/age) does:

* private: the first 32 bytes of ``SHA-512(seed)``, *unclamped* (X25519 clamps when
  it multiplies, so libsodium's clamped ``crypto_sign_ed25519_sk_to_curve25519`` gives
  the same shared secrets);
* public: the Montgomery ``u = (1 + y) / (1 - y) mod p`` of the Edwards ``y`` with the
  sign bit dropped, computed with big integers and *no* validity checks (y is not
  reduced first; ``y == 1`` maps to ``u = 0``). libsodium's
  ``crypto_sign_ed25519_pk_to_curve25519`` agrees on every valid key and refuses the
  odd ones; ironwood does not refuse, so neither do we.

Boxes use a precomputed shared key (``box.Precompute``) and a 24-byte nonce that is
16 zero bytes followed by a big-endian ``uint64`` (``nonceForUint64``). Sealed output is
the 16-byte Poly1305 tag followed by the ciphertext, as Go's ``box.SealAfterPrecomputation``
and libsodium's ``crypto_box_easy_afternm`` both lay it out.
"""

from __future__ import annotations

import hashlib

import nacl.bindings as sodium
import nacl.exceptions
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

__all__ = [
    "BOX_NONCE_SIZE",
    "BOX_OVERHEAD",
    "BOX_PUB_SIZE",
    "ED_PUB_SIZE",
    "ED_SIG_SIZE",
    "box_open",
    "box_seal",
    "box_shared",
    "ed25519_private_to_x25519",
    "ed25519_public_to_x25519",
    "ed_sign",
    "ed_verify",
    "is_usable_box_key",
    "new_box_keys",
    "nonce_for_uint64",
]

ED_PUB_SIZE = 32
ED_SIG_SIZE = 64
BOX_PUB_SIZE = 32
BOX_PRIV_SIZE = 32
BOX_NONCE_SIZE = 24
BOX_OVERHEAD = 16  # Poly1305 tag (golang.org/x/crypto/nacl/box.Overhead)

_P = 2**255 - 19
_UINT64_MAX = 2**64 - 1


def ed25519_public_to_x25519(public_key: bytes) -> bytes:
    """``e2c.Ed25519PublicKeyToCurve25519``: Edwards public key to Montgomery ``u``."""
    if len(public_key) != ED_PUB_SIZE:
        raise ValueError(f"an Ed25519 public key is 32 bytes, got {len(public_key)}")
    y = int.from_bytes(public_key, "little") & ((1 << 255) - 1)
    denominator = (1 - y) % _P
    # Go's big.Int.ModInverse leaves a non-invertible denominator (0) in place: u = 0.
    inverse = pow(denominator, -1, _P) if denominator else 0
    u = ((y + 1) * inverse) % _P
    return u.to_bytes(32, "little")


def ed25519_private_to_x25519(seed: bytes) -> bytes:
    """``e2c.Ed25519PrivateKeyToCurve25519``: ``SHA-512(seed)[:32]``, unclamped."""
    if len(seed) != 32:
        raise ValueError(f"an Ed25519 seed is 32 bytes, got {len(seed)}")
    return hashlib.sha512(seed).digest()[:BOX_PRIV_SIZE]


def new_box_keys() -> tuple[bytes, bytes]:
    """A fresh ephemeral box key pair ``(public, private)`` (``newBoxKeys``)."""
    public, private = sodium.crypto_box_keypair()
    return bytes(public), bytes(private)


def box_shared(public: bytes, private: bytes) -> bytes:
    """``box.Precompute``: HSalsa20 of the X25519 product.

    Raises :class:`ValueError` for a low-order ``public`` (an all-zero product), which
    libsodium refuses; only a hostile peer sends one, and the packet is then dropped.
    """
    if len(public) != BOX_PUB_SIZE or len(private) != BOX_PRIV_SIZE:
        raise ValueError("box keys are 32 bytes")
    try:
        return bytes(sodium.crypto_box_beforenm(public, private))
    except nacl.exceptions.CryptoError as exc:
        raise ValueError("box public key has low order") from exc


_PROBE_SCALAR = bytes([0x48]) + bytes(30) + bytes([0x40])


def is_usable_box_key(public: bytes) -> bool:
    """False for a key whose X25519 products are all zero (a low-order point)."""
    if len(public) != BOX_PUB_SIZE:
        return False
    try:
        sodium.crypto_scalarmult(_PROBE_SCALAR, public)
    except nacl.exceptions.CryptoError:
        return False
    return True


def nonce_for_uint64(value: int) -> bytes:
    """``nonceForUint64``: 16 zero bytes then the value as big-endian ``uint64``."""
    if not 0 <= value <= _UINT64_MAX:
        raise ValueError(f"nonce {value} does not fit in a uint64")
    return bytes(16) + value.to_bytes(8, "big")


def box_seal(message: bytes, nonce: int, shared: bytes) -> bytes:
    """``box.SealAfterPrecomputation``: tag (16) then ciphertext."""
    return bytes(sodium.crypto_box_easy_afternm(message, nonce_for_uint64(nonce), shared))


def box_open(boxed: bytes, nonce: int, shared: bytes) -> bytes | None:
    """``box.OpenAfterPrecomputation``; ``None`` when the tag does not verify."""
    if len(boxed) < BOX_OVERHEAD:
        return None
    try:
        return bytes(sodium.crypto_box_open_easy_afternm(boxed, nonce_for_uint64(nonce), shared))
    except nacl.exceptions.CryptoError:
        return None


def ed_sign(message: bytes, seed: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(seed).sign(message)


def ed_verify(message: bytes, signature: bytes, public_key: bytes) -> bool:
    """Ed25519 verification (RFC 8032, cofactorless, as Go's ``ed25519.Verify``)."""
    if len(signature) != ED_SIG_SIZE or len(public_key) != ED_PUB_SIZE:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
