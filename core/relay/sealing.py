"""Sealing what a relay holds, and the signed records of enrollment and announcement.

**Sealed items.** What a sender hands to a relay is readable only by the recipient::

    sealed = SealedBox(X25519(recipient's Ed25519 key)).encrypt(inner)
    inner  = version (1) | sender key (32) | app length (u8) | app | ref length (u8) | ref
             | body | signature (64)

The signature is the sender's Ed25519 signature over ``SEAL_DOMAIN || recipient key ||``
every byte of ``inner`` before it, so the recipient learns who sent it (the relay does
not: the box is anonymous, an ephemeral X25519 key per item) and that it was meant for
it. ``ref`` is the app's id for the message (chat: the envelope id in hex; mail: the
queue id), under which the app de-duplicates. The relay sees the recipient, the item id
(a keyed hash of sender, app and ref: equal for a re-submitted copy, nothing else), the
size and the time.

**Records.** Enrollment, leaving and the list of relays a person uses are signed records::

    kind (u8: 1 enroll, 2 leave, 3 announce) | owner key (32) | time, ms (u64)
    | count (u8) | count keys (32 each) | signature (64)

signed by ``owner`` over ``RECORD_DOMAIN ||`` the bytes before the signature. An enroll
or leave names one key, the relay's; an announce names the relays, at most MAX_RELAYS.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nacl.bindings import (
    crypto_sign_ed25519_pk_to_curve25519,
    crypto_sign_ed25519_sk_to_curve25519,
)
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

from core.identity import Identity

__all__ = [
    "MAX_RELAYS",
    "Record",
    "RecordKind",
    "SealError",
    "Unsealed",
    "item_id",
    "seal",
    "sign_record",
    "unseal",
    "verify_record",
]

SEAL_DOMAIN = b"meshsuite/relay/seal/v1\x00"
RECORD_DOMAIN = b"meshsuite/relay/record/v1\x00"
ITEM_DOMAIN = b"meshsuite/relay/item/v1\x00"
SEAL_VERSION = 1
SIG = 64
KEY = 32
MAX_RELAYS = 8
MAX_APP = 32
MAX_REF = 128
_RECORD_HEAD = struct.Struct(">B32sQB")


class SealError(ValueError):
    """A sealed item that does not open, or opens to something malformed or forged."""


@dataclass(frozen=True, slots=True)
class Unsealed:
    sender: bytes
    app: str
    ref: str
    body: bytes


def item_id(sender: bytes, recipient: bytes, app: str, ref: str) -> bytes:
    """The id a relay files an item under: the same for a re-submitted copy."""
    h = hashlib.blake2b(digest_size=16, key=recipient, person=b"meshsuite-relay")
    h.update(ITEM_DOMAIN + sender + app.encode() + b"\x00" + ref.encode())
    return h.digest()


def _curve_public(ed_public: bytes) -> PublicKey:
    return PublicKey(crypto_sign_ed25519_pk_to_curve25519(ed_public))


def _curve_private(identity: Identity) -> PrivateKey:
    return PrivateKey(crypto_sign_ed25519_sk_to_curve25519(identity.seed + identity.public_key))


def seal(identity: Identity, recipient: bytes, app: str, ref: str, body: bytes) -> bytes:
    """``body`` sealed to ``recipient``, signed by ``identity`` inside the box."""
    app_b, ref_b = app.encode(), ref.encode()
    if not 0 < len(app_b) <= MAX_APP or not 0 < len(ref_b) <= MAX_REF:
        raise ValueError(f"an app name is 1-{MAX_APP} bytes and a ref 1-{MAX_REF}")
    inner = (
        bytes((SEAL_VERSION,))
        + identity.public_key
        + bytes((len(app_b),))
        + app_b
        + bytes((len(ref_b),))
        + ref_b
        + body
    )
    signature = identity.sign(SEAL_DOMAIN + recipient + inner)
    return bytes(SealedBox(_curve_public(recipient)).encrypt(inner + signature))


def unseal(identity: Identity, blob: bytes) -> Unsealed:
    """Open an item sealed to ``identity``; :class:`SealError` unless it opens, parses and
    its sender's signature verifies."""
    try:
        inner = SealedBox(_curve_private(identity)).decrypt(blob)
    except (CryptoError, ValueError, TypeError) as exc:
        raise SealError(f"does not open with this node's key: {exc}") from None
    if len(inner) < 1 + KEY + 1 + 1 + 1 + 1 + SIG or inner[0] != SEAL_VERSION:
        raise SealError("not a version 1 sealed item")
    signed, signature = inner[:-SIG], inner[-SIG:]
    sender = signed[1 : 1 + KEY]
    at = 1 + KEY
    app_len = signed[at]
    app_b = signed[at + 1 : at + 1 + app_len]
    at += 1 + app_len
    if at >= len(signed) or not 0 < app_len <= MAX_APP:
        raise SealError("bad app name")
    ref_len = signed[at]
    ref_b = signed[at + 1 : at + 1 + ref_len]
    at += 1 + ref_len
    if at > len(signed) or not 0 < ref_len <= MAX_REF:
        raise SealError("bad ref")
    try:
        Ed25519PublicKey.from_public_bytes(sender).verify(
            signature, SEAL_DOMAIN + identity.public_key + signed
        )
    except (InvalidSignature, ValueError):
        raise SealError("the sender's signature does not verify") from None
    try:
        app, ref = app_b.decode("ascii"), ref_b.decode("ascii")
    except UnicodeDecodeError:
        raise SealError("app and ref are ASCII") from None
    return Unsealed(bytes(sender), app, ref, bytes(signed[at:]))


class RecordKind(enum.IntEnum):
    ENROLL = 1
    LEAVE = 2
    ANNOUNCE = 3


@dataclass(frozen=True, slots=True)
class Record:
    kind: RecordKind
    owner: bytes
    time_ms: int
    keys: tuple[bytes, ...]

    def signed_part(self) -> bytes:
        return _RECORD_HEAD.pack(self.kind, self.owner, self.time_ms, len(self.keys)) + b"".join(
            self.keys
        )


def sign_record(identity: Identity, kind: RecordKind, time_ms: int, keys: list[bytes]) -> bytes:
    if len(keys) > MAX_RELAYS or any(len(k) != KEY for k in keys):
        raise ValueError(f"a record names at most {MAX_RELAYS} keys of {KEY} bytes")
    record = Record(kind, identity.public_key, time_ms, tuple(keys))
    part = record.signed_part()
    return part + identity.sign(RECORD_DOMAIN + part)


def verify_record(data: bytes) -> Record:
    """The record in ``data`` if well formed and signed by its owner; SealError if not."""
    if len(data) < _RECORD_HEAD.size + SIG:
        raise SealError("a record is too short")
    kind, owner, time_ms, count = _RECORD_HEAD.unpack_from(data)
    if count > MAX_RELAYS or len(data) != _RECORD_HEAD.size + count * KEY + SIG:
        raise SealError("a record's key count does not match its length")
    try:
        rkind = RecordKind(kind)
    except ValueError:
        raise SealError(f"unknown record kind {kind}") from None
    part, signature = data[:-SIG], data[-SIG:]
    try:
        Ed25519PublicKey.from_public_bytes(owner).verify(signature, RECORD_DOMAIN + part)
    except (InvalidSignature, ValueError):
        raise SealError("the record's signature does not verify") from None
    keys = tuple(bytes(part[i : i + KEY]) for i in range(_RECORD_HEAD.size, len(part), KEY))
    if len(set(keys)) != len(keys):
        raise SealError("a record names a key twice")
    return Record(rkind, bytes(owner), int(time_ms), keys)
