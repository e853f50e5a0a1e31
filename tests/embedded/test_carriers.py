"""The carrier registry: links found by URI scheme, one module per carrier."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

from core.embedded import PacketNetwork
from core.embedded.carriers import BUILTIN, CarrierRegistry, UnknownScheme
from core.embedded.carriers.memory import MemoryCarrier, MemoryHub
from tests.embedded.carrier_util import until

pytestmark = pytest.mark.timeout(60)


async def test_a_link_dials_and_listens_over_a_carrier_found_by_its_scheme() -> None:
    hub = MemoryHub()
    a = PacketNetwork(os.urandom(32), carriers={"mem": MemoryCarrier(hub)})
    b = PacketNetwork(os.urandom(32), carriers={"mem": MemoryCarrier(hub)})
    await a.start()
    await b.start()
    try:
        assert await b.listen("mem://bee:0") == "mem://bee:0"
        await a.add_peer(f"mem://bee:0?key={b.public_key.hex()}")
        await until(lambda: [p.key for p in a.peers() if p.up] == [b.public_key])
        await until(lambda: [p.key for p in b.peers() if p.up] == [a.public_key])
        assert [p.uri for p in a.peers()] == ["mem://bee:0"]
        assert b.peers()[0].inbound
    finally:
        await a.close()
        await b.close()
    assert hub.listeners == {}  # closing the network closed its listener


async def test_a_refused_dial_is_retried_like_any_unreachable_peer() -> None:
    a = PacketNetwork(os.urandom(32), carriers={"mem": MemoryCarrier()})
    await a.start()
    try:
        await a.add_peer("mem://nobody:0")
        await until(lambda: a.peers()[0].last_error is not None)
        assert "nothing listens on mem://nobody" in str(a.peers()[0].last_error)
        assert a.pending_count == 0
    finally:
        await a.close()


async def test_an_unknown_scheme_is_refused_naming_the_known_ones() -> None:
    net = PacketNetwork(os.urandom(32))
    await net.start()
    try:
        for call in (net.add_peer, net.listen, net.call):
            with pytest.raises(UnknownScheme, match="the embedded node speaks") as info:
                await call("udp://[::1]:1")
            assert "'udp'" in str(info.value)
            assert all(f"{s}://" in str(info.value) for s in BUILTIN)
        with pytest.raises(UnknownScheme):
            await net.add_peer("mem://x:0")  # the test carrier is not a built-in one
    finally:
        await net.close()


def test_built_in_carriers_are_imported_only_when_a_uri_needs_them() -> None:
    registry = CarrierRegistry()
    assert set(registry.schemes) == set(BUILTIN)
    code = (
        "import asyncio, os, sys\n"
        "from core.embedded.network import PacketNetwork\n"
        "async def main():\n"
        "    net = PacketNetwork(os.urandom(32))\n"
        "    await net.start()\n"
        "    await net.listen('tcp://127.0.0.1:0')\n"
        "    await net.close()\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if m.startswith(\n"
        "    ('core.embedded.carriers.', 'aioquic', 'websockets'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # a tcp-only node loads the tcp carrier, not the QUIC or WebSocket libraries
    assert out.stdout.strip() == "['core.embedded.carriers.tcp']"
    assert registry.get("tcp").scheme == "tcp"


def test_mesh_up_with_an_unknown_scheme_is_a_usage_error_naming_the_schemes() -> None:
    with tempfile.TemporaryDirectory(prefix="mesh-") as data:
        for flag in ("--peer", "--listen"):
            out = subprocess.run(
                [sys.executable, "-m", "core.cli.main", "--data-dir", data, "up",
                 "--backend", "embedded", "--no-services", flag, "gopher://[::1]:70"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert out.returncode == 2, out.stderr
            assert "Traceback" not in out.stderr
            assert "unsupported link scheme 'gopher'" in out.stderr
            assert all(f"{s}://" in out.stderr for s in BUILTIN)


async def test_a_static_peer_that_is_this_node_is_not_redialled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    net = PacketNetwork(os.urandom(32))
    await net.start()
    try:
        uri = await net.listen("tcp://127.0.0.1:0")
        await net.add_peer(uri)
        await until(lambda: "is this node itself: not redialled" in caplog.text)
        [static] = [p for p in net.peers() if not p.inbound]
        assert "our own key" in str(static.last_error) and not static.up
        await net.remove_peer(uri)  # still listed, still removable
    finally:
        await net.close()


def test_handshakes_are_length_checked_as_yggdrasil_0_5_14_does() -> None:
    import struct

    from core.embedded.meta import HEADER_SIZE, HandshakeError, decode_body, encode_meta

    body = encode_meta(os.urandom(32))[HEADER_SIZE:]
    tlvs, sig = body[:-64], body[-64:]
    decode_body(body, b"")  # exact: accepted
    for bad, why in [
        (tlvs + b"\x00" + sig, "bytes after the last field"),
        (tlvs + struct.pack(">HH", 9, 8) + b"abc" + sig, "truncated field"),
        (struct.pack(">HH", 0, 3) + b"\x00" * 3 + tlvs[6:] + sig, "field 0 is 3 bytes"),
    ]:
        with pytest.raises(HandshakeError, match=why):
            decode_body(bad, b"")
