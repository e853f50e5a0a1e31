"""The yggdrasil 0.5 link handshake (``src/core/version.go`` at v0.5.12).

Each side sends, before anything else::

    "meta"  uint16 BE remaining-length
    TLV*    uint16 BE type, uint16 BE length, value
              0 version major (uint16 BE)   1 version minor (uint16 BE)
              2 ed25519 public key (32)     3 priority (uint8)
    sig     ed25519 signature (64) over BLAKE2b-512(key=password)(public key)

The remaining-length counts the TLVs and the signature. A wrong password makes the
signature check fail, as in yggdrasil-go. Yggdrasil 0.4 sends ``"meta"``, a one-byte
major and minor version (0, 4) and a bare key: its "length" field reads 0x0004.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "HEADER_SIZE",
    "MAX_PASSWORD",
    "PROTOCOL_MAJOR",
    "PROTOCOL_MINOR",
    "HandshakeError",
    "Meta",
    "MetaReader",
    "encode_meta",
]

PROTOCOL_MAJOR = 0
PROTOCOL_MINOR = 5
HEADER_SIZE = 6
MAX_PASSWORD = 64  # blake2b.Size: yggdrasil refuses longer link passwords
_MAGIC = b"meta"
_SIG_SIZE = 64
_KEY_SIZE = 32
_T_MAJOR, _T_MINOR, _T_KEY, _T_PRIORITY = 0, 1, 2, 3


class HandshakeError(ValueError):
    """The remote side's handshake was refused; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Meta:
    """A decoded (and verified) handshake."""

    major: int
    minor: int
    public_key: bytes
    priority: int

    def check_version(self) -> None:
        if (self.major, self.minor) != (PROTOCOL_MAJOR, PROTOCOL_MINOR):
            raise HandshakeError(
                f"remote node incompatible version (local {PROTOCOL_MAJOR}.{PROTOCOL_MINOR}, "
                f"remote {self.major}.{self.minor}); both ends must run Yggdrasil 0.5"
            )
        if len(self.public_key) != _KEY_SIZE:
            raise HandshakeError("remote handshake carries no valid public key")


def _password_hash(password: bytes, public_key: bytes) -> bytes:
    if len(password) > MAX_PASSWORD:
        raise ValueError(f"link password is longer than {MAX_PASSWORD} bytes")
    return hashlib.blake2b(public_key, digest_size=64, key=password).digest()


def encode_meta(private_seed: bytes, *, priority: int = 0, password: bytes = b"") -> bytes:
    """Our handshake bytes (``version_metadata.encode``)."""
    if not 0 <= priority <= 255:
        raise ValueError(f"priority must be 0..255, got {priority}")
    sk = Ed25519PrivateKey.from_private_bytes(private_seed)
    public_key = sk.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    body = bytearray()
    body += struct.pack(">HHH", _T_MAJOR, 2, PROTOCOL_MAJOR)
    body += struct.pack(">HHH", _T_MINOR, 2, PROTOCOL_MINOR)
    body += struct.pack(">HH", _T_KEY, _KEY_SIZE) + public_key
    body += struct.pack(">HHB", _T_PRIORITY, 1, priority)
    body += sk.sign(_password_hash(password, public_key))
    return _MAGIC + struct.pack(">H", len(body)) + bytes(body)


def check_header(header: bytes) -> int:
    """Validate the 6-byte header; return the remaining length."""
    if len(header) != HEADER_SIZE:
        raise HandshakeError("truncated handshake header")
    if header[:4] != _MAGIC:
        raise HandshakeError("invalid handshake, remote side is not Yggdrasil")
    length = struct.unpack(">H", header[4:6])[0]
    if header[4:6] == b"\x00\x04":
        raise HandshakeError(
            "remote node speaks the Yggdrasil 0.4 protocol (version 0.4 handshake); "
            "0.4 and 0.5 cannot peer: upgrade the remote node to Yggdrasil 0.5"
        )
    if length < _SIG_SIZE:
        raise HandshakeError("invalid handshake length, possible version mismatch")
    return int(length)


def decode_body(body: bytes, password: bytes) -> Meta:
    """Parse TLVs, verify the signature with ``password`` (``version_metadata.decode``)."""
    if len(body) < _SIG_SIZE:
        raise HandshakeError("invalid handshake length, possible version mismatch")
    sig = body[-_SIG_SIZE:]
    tlvs = body[:-_SIG_SIZE]
    fields: dict[int, bytes] = {}
    pos = 0
    # as yggdrasil-go 0.5.14 (stricter than 0.5.12, which every real peer satisfies): a
    # truncated TLV, a known field of the wrong size or bytes left over are refused
    while len(tlvs) - pos >= 4:
        op, oplen = struct.unpack(">HH", tlvs[pos : pos + 4])
        pos += 4
        if len(tlvs) - pos < oplen:
            raise HandshakeError("invalid handshake length: a truncated field")
        fields[op] = tlvs[pos : pos + oplen]
        pos += oplen
    if pos != len(tlvs):
        raise HandshakeError("invalid handshake length: bytes after the last field")
    major = _tlv_uint(fields, _T_MAJOR, 2)
    minor = _tlv_uint(fields, _T_MINOR, 2)
    key = fields.get(_T_KEY, b"")
    if len(key) != _KEY_SIZE:
        raise HandshakeError("handshake carries no 32-byte public key")
    priority = _tlv_uint(fields, _T_PRIORITY, 1)
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(sig, _password_hash(password, key))
    except (InvalidSignature, ValueError):
        raise HandshakeError(
            "password does not match remote side (handshake signature invalid); "
            "check the ?password= of this peering on both ends"
        ) from None
    return Meta(major, minor, key, priority)


def _tlv_uint(fields: dict[int, bytes], op: int, size: int) -> int:
    raw = fields.get(op)
    if raw is None:
        return 0
    if len(raw) != size:
        raise HandshakeError(f"handshake field {op} is {len(raw)} bytes, expected {size}")
    return int.from_bytes(raw, "big")


class MetaReader:
    """Sans-IO reader of the remote handshake: feed bytes until :attr:`meta` is set.

    Bytes after the handshake (the first ironwood frames) are kept in :attr:`rest`.
    """

    def __init__(self, password: bytes = b"") -> None:
        self._password = password
        self._buf = bytearray()
        self._need: int | None = None
        self.meta: Meta | None = None
        self.rest = b""
        self.raw = b""

    def feed(self, data: bytes) -> Meta | None:
        if self.meta is not None:
            self.rest += data
            return self.meta
        self._buf += data
        if self._need is None and len(self._buf) >= HEADER_SIZE:
            self._need = check_header(bytes(self._buf[:HEADER_SIZE]))
        if self._need is not None and len(self._buf) >= HEADER_SIZE + self._need:
            end = HEADER_SIZE + self._need
            self.raw = bytes(self._buf[:end])
            meta = decode_body(bytes(self._buf[HEADER_SIZE:end]), self._password)
            meta.check_version()
            self.rest = bytes(self._buf[end:])
            self._buf.clear()
            self.meta = meta
        return self.meta
