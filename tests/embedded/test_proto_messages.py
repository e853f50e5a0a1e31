"""Proto messages: byte layouts of the answers and garbage handling."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from core.embedded.proto import (
    ProtoHandler,
    SelfView,
    encode_nodeinfo,
    split_keys,
)

KEY = bytes(range(32))
PEERS = tuple(bytes([i]) * 32 for i in range(1, 6))


def handler(mtu: int = 1000) -> tuple[ProtoHandler, list[tuple[bytes, bytes]]]:
    sent: list[tuple[bytes, bytes]] = []
    view = SelfView(key=KEY, routing_entries=7, peer_keys=PEERS, tree_keys=PEERS[:2])
    return (
        ProtoHandler(
            send=lambda k, p: sent.append((k, p)),
            self_view=lambda: view,
            mtu=lambda: mtu,
            nodeinfo=encode_nodeinfo({"b": 1, "a": "x"}),
        ),
        sent,
    )


def test_answers_byte_exact() -> None:
    proto, sent = handler()
    asker = b"\xaa" * 32
    proto.handle(asker, b"\x01")
    assert sent.pop() == (asker, b'\x02\x02{"a":"x","b":1}')
    proto.handle(asker, b"\xff\x01")
    assert sent.pop() == (asker, b"\x02\xff\x02" + json.dumps(
        {"key": KEY.hex(), "routing_entries": "7"}, separators=(",", ":")).encode())  # fmt: skip
    proto.handle(asker, b"\xff\x03")
    assert sent.pop() == (asker, b"\x02\xff\x04" + b"".join(PEERS))
    proto.handle(asker, b"\xff\x05")
    assert sent.pop() == (asker, b"\x02\xff\x06" + b"".join(PEERS[:2]))
    for ignored in (b"", b"\x00", b"\xff", b"\xff\x00", b"\x07", b"\x02late", b"\xff\x02{}"):
        proto.handle(asker, ignored)
    assert sent == []


def test_peer_list_cut_to_mtu() -> None:
    proto, sent = handler(mtu=2 + 3 * 32 + 5)
    proto.handle(KEY, b"\xff\x03")
    assert sent.pop()[1] == b"\x02\xff\x04" + b"".join(PEERS[:3])


def test_requests_and_responses() -> None:
    proto, sent = handler()
    got: list[bytes] = []
    other = b"\xbb" * 32
    proto.request("nodeinfo", other, got.append)
    proto.request("peers", other, got.append)
    assert sent == [(other, b"\x02\x01"), (other, b"\x02\xff\x03")]
    proto.handle(KEY, b"\x02{}")  # wrong sender: ignored
    proto.handle(other, b'\x02{"x":1}')
    proto.handle(other, b"\xff\x04" + PEERS[0] + b"\x01")
    assert got == [b'{"x":1}', PEERS[0] + b"\x01"]
    assert split_keys(got[1]) == [PEERS[0]]
    proto.handle(other, b"\x02{}")  # answered already
    assert len(got) == 2


def test_nodeinfo_limit() -> None:
    try:
        encode_nodeinfo({"x": "y" * 17000})
    except ValueError as exc:
        assert "16384" in str(exc)
    else:
        raise AssertionError("oversized NodeInfo accepted")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_garbage_never_crashes(data: bytes) -> None:
    proto, sent = handler()
    proto.handle(KEY, data)
    assert all(p[0] == 2 for _, p in sent)
