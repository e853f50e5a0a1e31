"""The signed chat envelope: canonical binary encoding, signing and verification.

    offset size   field
    0      1      version      (1)
    1      1      kind         (Kind: 1 text, 2 receipt, 3 read, 4 typing)
    2      16     id           random 128-bit message id
    18     32     sender       the sender node's Ed25519 key (its mesh address derives from it)
    50     32     signer       the key that signed: the sender key itself, or the sender's app key
    82     32     recipient    the recipient node's key
    114    8      sent         sent time, milliseconds since the epoch (0 = none: refused)
    122    1      flags        bit 0: a reply-to id follows; other bits must be 0
    123    (16)   reply_to     only with flag bit 0
    ...    4      body length  then the body: UTF-8 text (text); 16-byte ids (receipt, read);
                               one byte 0/1 (typing)
    ...    64     signature    Ed25519 by ``signer`` over DOMAIN || every byte above

The encoding is canonical: one envelope has exactly one encoding; the decoder refuses
trailing bytes, unknown kinds or flags, bodies that break their kind's rule, and lengths
that do not add up.
"""

from __future__ import annotations

import enum
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = [
    "DOMAIN",
    "MAX_BODY",
    "MAX_IDS",
    "Envelope",
    "EnvelopeError",
    "Kind",
    "new_id",
]

DOMAIN = b"meshsuite/chat/envelope/v1\x00"
VERSION = 1
MAX_BODY = 16 * 1024  # bytes of UTF-8 text in one message
MAX_IDS = 512  # ids in one receipt/read envelope
_HEAD = struct.Struct(">BB16s32s32s32sQB")
_LEN = struct.Struct(">I")
SIG = 64
FLAG_REPLY = 0x01


class Kind(enum.IntEnum):
    TEXT = 1
    RECEIPT = 2
    READ = 3
    TYPING = 4


class EnvelopeError(ValueError):
    """Bytes that are not a well-formed envelope."""


def new_id() -> bytes:
    return os.urandom(16)


@dataclass(frozen=True)
class Envelope:
    kind: Kind
    id: bytes
    sender: bytes
    signer: bytes
    recipient: bytes
    sent_ms: int
    body: bytes
    reply_to: bytes | None = None
    signature: bytes = b""

    # -- building -------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        kind: Kind,
        *,
        sender: bytes,
        signer: bytes,
        recipient: bytes,
        sent_ms: int,
        body: bytes,
        sign: Callable[[bytes], bytes],
        reply_to: bytes | None = None,
        id: bytes | None = None,
    ) -> Envelope:
        env = cls(kind, id or new_id(), sender, signer, recipient, sent_ms, body, reply_to)
        _check_fields(env)
        return env.with_signature(sign(env.signed_bytes()))

    def with_signature(self, signature: bytes) -> Envelope:
        return Envelope(
            self.kind,
            self.id,
            self.sender,
            self.signer,
            self.recipient,
            self.sent_ms,
            self.body,
            self.reply_to,
            signature,
        )

    # -- encoding -------------------------------------------------------------------
    def unsigned_bytes(self) -> bytes:
        flags = FLAG_REPLY if self.reply_to is not None else 0
        head = _HEAD.pack(
            VERSION,
            int(self.kind),
            self.id,
            self.sender,
            self.signer,
            self.recipient,
            self.sent_ms,
            flags,
        )
        return head + (self.reply_to or b"") + _LEN.pack(len(self.body)) + self.body

    def signed_bytes(self) -> bytes:
        """What the signature covers: the domain-separation prefix and the fields."""
        return DOMAIN + self.unsigned_bytes()

    def __bytes__(self) -> bytes:
        if len(self.signature) != SIG:
            raise ValueError("an envelope must be signed before it is encoded")
        return self.unsigned_bytes() + self.signature

    @classmethod
    def parse(cls, data: bytes) -> Envelope:
        if len(data) < _HEAD.size + _LEN.size + SIG:
            raise EnvelopeError(f"an envelope is at least 191 bytes, got {len(data)}")
        version, kind, id_, sender, signer, recipient, sent_ms, flags = _HEAD.unpack_from(data)
        if version != VERSION:
            raise EnvelopeError(f"envelope version {version}, this node reads 1")
        if kind not in Kind._value2member_map_:
            raise EnvelopeError(f"unknown envelope kind {kind}")
        if flags & ~FLAG_REPLY:
            raise EnvelopeError(f"unknown envelope flags {flags:#04x}")
        at = _HEAD.size
        reply_to = None
        if flags & FLAG_REPLY:
            reply_to, at = data[at : at + 16], at + 16
        if len(data) < at + _LEN.size + SIG:
            raise EnvelopeError("the envelope ends before its body length")
        (length,) = _LEN.unpack_from(data, at)
        at += _LEN.size
        if len(data) != at + length + SIG:
            raise EnvelopeError(
                f"the body length {length} does not match the envelope's {len(data)} bytes"
            )
        env = cls(
            Kind(kind),
            id_,
            sender,
            signer,
            recipient,
            sent_ms,
            data[at : at + length],
            reply_to,
            data[at + length :],
        )
        _check_fields(env)
        return env

    # -- meaning --------------------------------------------------------------------
    def verify(self) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.signer).verify(
                self.signature, self.signed_bytes()
            )
        except (InvalidSignature, ValueError):
            return False
        return True

    @property
    def text(self) -> str:
        return self.body.decode()

    @property
    def ids(self) -> list[bytes]:
        """The message ids a receipt or read envelope names."""
        return [self.body[i : i + 16] for i in range(0, len(self.body), 16)]

    @property
    def active(self) -> bool:
        return self.body == b"\x01"


def ids_body(ids: Sequence[bytes]) -> bytes:
    return b"".join(ids)


def _check_fields(env: Envelope) -> None:
    if len(env.id) != 16:
        raise EnvelopeError("an envelope id is 16 bytes")
    for name in ("sender", "signer", "recipient"):
        if len(getattr(env, name)) != 32:
            raise EnvelopeError(f"the {name} key is 32 bytes")
    if env.reply_to is not None and (len(env.reply_to) != 16 or env.kind is not Kind.TEXT):
        raise EnvelopeError("a reply-to is a 16-byte id, on a text message only")
    if env.kind is Kind.TEXT:
        if len(env.body) > MAX_BODY:
            raise EnvelopeError(f"a message body is at most {MAX_BODY} bytes")
        try:
            env.body.decode()
        except UnicodeDecodeError:
            raise EnvelopeError("a text body must be UTF-8") from None
    elif env.kind in (Kind.RECEIPT, Kind.READ):
        if not env.body or len(env.body) % 16 or len(env.body) > 16 * MAX_IDS:
            raise EnvelopeError(f"a {env.kind.name.lower()} body is 1-{MAX_IDS} 16-byte ids")
    elif env.body not in (b"\x00", b"\x01"):
        raise EnvelopeError("a typing body is one byte, 0 or 1")
