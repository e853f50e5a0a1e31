"""Byte-exact unit tests of the ironwood wire codec and the 0.5 meta handshake."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.embedded.meta import HandshakeError, MetaReader, encode_meta
from core.embedded.wire import (
    MAX_UINT64,
    Announce,
    FrameDecoder,
    PacketType,
    PathBroken,
    PathLookup,
    PathNotify,
    PathNotifyInfo,
    SigReq,
    SigRes,
    Traffic,
    chop_uvarint,
    encode_frame,
    uvarint,
)

K1 = bytes(range(32))
K2 = bytes(range(32, 64))
SIG = bytes(range(64))


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "00"),
        (1, "01"),
        (127, "7f"),
        (128, "8001"),
        (300, "ac02"),
        (MAX_UINT64, "ffffffffffffffffff01"),
    ],
)
def test_uvarint_matches_go_binary_uvarint(value: int, encoded: str) -> None:
    assert uvarint(value).hex() == encoded
    assert chop_uvarint(bytes.fromhex(encoded), 0) == (value, len(encoded) // 2)


@pytest.mark.parametrize("bad", ["", "80", "ffffffffffffffffff02", "ffffffffffffffffffff01"])
def test_uvarint_rejects_truncated_and_overflowing(bad: str) -> None:
    with pytest.raises(ValueError):
        chop_uvarint(bytes.fromhex(bad), 0)


def test_keepalive_frame_is_the_two_bytes_ironwood_writes() -> None:
    assert encode_frame(PacketType.KEEPALIVE, b"") == b"\x01\x01"


def test_sigreq_worked_example() -> None:
    # the docs' worked example: seq 2, nonce 0x0123456789abcdef
    body = bytes(SigReq(2, 0x0123456789ABCDEF))
    assert body.hex() == "02ef9bafcdf8acd19101"
    assert encode_frame(PacketType.SIG_REQ, body).hex() == "0b0202ef9bafcdf8acd19101"


@pytest.mark.parametrize(
    "msg",
    [
        SigReq(1, 2),
        SigRes(5, MAX_UINT64, 3, SIG),
        Announce(K1, K2, SigRes(7, 8, 9, SIG), SIG[::-1]),
        PathLookup(K1, K2, (1, 200, 70000)),
        PathNotify((3, 4), MAX_UINT64, K1, K2, PathNotifyInfo(1700000000, (1, 2), SIG)),
        PathBroken((), 17, K1, K2),
        Traffic((1,), (2, 3), K1, K2, MAX_UINT64, b"payload"),
        Traffic((), (), K1, K2, 0, b""),
    ],
)
def test_messages_round_trip(msg: object) -> None:
    data = bytes(msg)  # type: ignore[call-overload]
    assert type(msg).parse(data) == msg  # type: ignore[attr-defined]


def test_traffic_layout_is_path_from_source_dest_watermark_payload() -> None:
    tr = Traffic((1, 300), (), K1, K2, 5, b"xy")
    assert bytes(tr) == b"\x01\xac\x02\x00" + b"\x00" + K1 + K2 + b"\x05" + b"xy"
    assert Traffic.overhead() == 77  # ironwood MTU(): 1048576/131070 minus this


def test_trailing_bytes_are_refused() -> None:
    with pytest.raises(ValueError, match="trailing"):
        SigReq.parse(bytes(SigReq(1, 2)) + b"\x00")
    with pytest.raises(ValueError, match="trailing"):
        PathLookup.parse(bytes(PathLookup(K1, K2, ())) + b"\x01")


def test_frame_decoder_splits_and_bounds() -> None:
    dec = FrameDecoder(max_size=100)
    stream = encode_frame(PacketType.SIG_REQ, bytes(SigReq(1, 2))) + b"\x01\x01"
    assert dec.feed(stream[:3]) == []
    assert dec.feed(stream[3:]) == [b"\x02\x01\x02", b"\x01"]
    with pytest.raises(ValueError, match="oversized"):
        FrameDecoder(max_size=100).feed(uvarint(101))
    with pytest.raises(ValueError, match="empty"):
        FrameDecoder(max_size=100).feed(b"\x00")


def test_meta_layout_and_signature() -> None:
    seed = bytes(range(100, 132))
    sk = Ed25519PrivateKey.from_private_bytes(seed)
    meta = encode_meta(seed, priority=7, password=b"secret")
    pub = meta[22:54]
    assert meta[:4] == b"meta"
    assert int.from_bytes(meta[4:6], "big") == len(meta) - 6 == 117
    assert meta[6:22].hex() == "0000000200000001000200050002" + "0020"
    assert meta[54:59].hex() == "0003000107"
    digest = hashlib.blake2b(pub, digest_size=64, key=b"secret").digest()
    assert meta[59:] == sk.sign(digest)
    reader = MetaReader(b"secret")
    got = reader.feed(meta + b"\x01\x01")
    assert got is not None and got.public_key == pub and got.priority == 7
    assert reader.rest == b"\x01\x01"


def test_meta_wrong_password_is_refused() -> None:
    meta = encode_meta(bytes(32), password=b"right")
    with pytest.raises(HandshakeError, match="password"):
        MetaReader(b"wrong").feed(meta)


def test_meta_of_yggdrasil_04_is_refused_with_a_clear_message() -> None:
    v04 = b"meta\x00\x04" + K1
    with pytest.raises(HandshakeError, match=r"0\.4"):
        MetaReader().feed(v04)


def test_meta_not_yggdrasil() -> None:
    with pytest.raises(HandshakeError, match="not Yggdrasil"):
        MetaReader().feed(b"GET / HTTP/1.1\r\n")
