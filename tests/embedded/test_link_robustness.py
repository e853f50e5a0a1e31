"""Hostile peers are dropped; garbage never escapes as anything but ValueError."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from core.embedded import NetworkConfig, PacketNetwork
from core.embedded.meta import MetaReader, encode_meta
from core.embedded.peers import PeerSession
from core.embedded.router import Router
from core.embedded.wire import PacketType, SigRes, encode_frame, uvarint

pytestmark = pytest.mark.timeout(60)


async def _connect(net_uri: str, meta: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = net_uri.removeprefix("tcp://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    writer.write(meta)
    return reader, writer


async def _closed_by_remote(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    async def drain() -> None:
        while await reader.read(65536):
            pass

    try:
        await asyncio.wait_for(drain(), timeout)
    except TimeoutError:
        return False
    return True


@pytest.fixture
async def listening() -> AsyncIterator[tuple[PacketNetwork, str]]:
    net = PacketNetwork(os.urandom(32))
    await net.start()
    uri = await net.listen("tcp://127.0.0.1:0?password=pw")
    yield net, uri
    await net.close()


def _forged_meta() -> bytes:
    """A handshake claiming someone else's key (the signature is by another key)."""
    real = encode_meta(os.urandom(32), password=b"pw")
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    return real[:22] + other + real[54:]


@pytest.mark.parametrize(
    ("meta", "log_text"),
    [
        (encode_meta(os.urandom(32), password=b"wrong"), "password does not match"),
        (_forged_meta(), "signature invalid"),
        (b"meta" + struct.pack(">H", 10) + bytes(10), "invalid handshake length"),
        (b"GET / HTTP/1.0\r\n\r\n", "not Yggdrasil"),
    ],
    ids=["wrong-password", "forged-signature", "short", "not-yggdrasil"],
)
async def test_bad_handshakes_are_dropped(
    listening: tuple[PacketNetwork, str],
    caplog: pytest.LogCaptureFixture,
    meta: bytes,
    log_text: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="core.embedded")
    net, uri = listening
    reader, writer = await _connect(uri, meta)
    try:
        assert await _closed_by_remote(reader)
    finally:
        writer.close()
    assert log_text in caplog.text
    assert not [p for p in net.peers() if p.up]


async def _established(uri: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    seed = os.urandom(32)
    reader, writer = await _connect(uri, encode_meta(seed, password=b"pw"))
    meta_reader = MetaReader(b"pw")
    while meta_reader.feed(await reader.read(4096)) is None:
        pass
    return reader, writer, seed


@pytest.mark.parametrize(
    "frames",
    [
        encode_frame(PacketType.SIG_REQ, b"\x01"),  # truncated SigReq
        uvarint(2) + b"\x7f\x00",  # unknown type
        b"\x00",  # empty frame
        uvarint(65535 * 2 + 1),  # oversize length prefix
        encode_frame(PacketType.SIG_RES, bytes(SigRes(1, 2, 1, bytes(64)))),  # bad signature
        encode_frame(PacketType.BLOOM_FILTER, b"\xff" * 32),  # both flags set
    ],
    ids=["truncated", "unknown-type", "empty", "oversize", "bad-sigres", "bad-bloom"],
)
async def test_malformed_frames_drop_the_link(
    listening: tuple[PacketNetwork, str], frames: bytes
) -> None:
    net, uri = listening
    reader, writer, _seed = await _established(uri)
    try:
        for _ in range(100):
            if [p for p in net.peers() if p.up]:
                break
            await asyncio.sleep(0.02)
        assert [p for p in net.peers() if p.up]
        writer.write(frames)
        assert await _closed_by_remote(reader)
    finally:
        writer.close()
    assert not [p for p in net.peers() if p.up]


async def test_silent_peer_times_out(listening: tuple[PacketNetwork, str]) -> None:
    """We sent SigReq/announces; no reply within peer_timeout (3 s) drops the link."""
    net, uri = listening
    reader, writer, _seed = await _established(uri)
    try:
        assert await _closed_by_remote(reader, timeout=8)
    finally:
        writer.close()
    assert not [p for p in net.peers() if p.up]


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=600))
def test_inbound_path_turns_garbage_into_value_error(data: bytes) -> None:
    """Sans-IO: stream bytes -> frames -> router; nothing but ValueError may escape."""
    config = NetworkConfig()
    router = Router(bytes(32), config, clock=lambda: 100.0)
    router.maintenance()
    session = PeerSession(b"\x01" * 32, 1, 0, 0, config, 100.0)
    router.add_peer(session)
    with contextlib.suppress(ValueError):
        for frame in session.receive_data(data, 100.0):
            router.handle_frame(session, frame)


@pytest.mark.parametrize("scheme", ["tcp", "tls"])
async def test_key_pinning_over_ipv6(scheme: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="core.embedded")
    server, right, wrong = (PacketNetwork(os.urandom(32)) for _ in range(3))
    for net in (server, right, wrong):
        await net.start()
    try:
        uri = await server.listen(f"{scheme}://[::1]:0")
        assert uri.startswith(f"{scheme}://[::1]:")
        await right.add_peer(f"{uri}?key={server.public_key.hex()}")
        await wrong.add_peer(f"{uri}?key={os.urandom(32).hex()}")
        for _ in range(1000):  # bounded (20 s), not timed: a loaded machine is slow
            # the refusal is logged when the link fails; the peer's last_error is set
            # once its connection has closed, a loop turn or more later
            if [p for p in right.peers() if p.up] and wrong.peers()[0].last_error:
                break
            await asyncio.sleep(0.02)
        [up] = [p for p in right.peers() if p.up]
        assert up.key == server.public_key and up.uri == uri
        assert not [p for p in wrong.peers() if p.up]
        [down] = wrong.peers()
        assert not down.up and down.last_error is not None and "pinned" in down.last_error
        await right.remove_peer(uri)
        for _ in range(1000):
            if not [p for p in server.peers() if p.up]:
                break
            await asyncio.sleep(0.02)
        assert not [p for p in server.peers() if p.up] and right.peers() == []
    finally:
        for net in (server, right, wrong):
            await net.close()


def test_peer_uri_errors_say_what_is_wrong() -> None:
    from core.embedded.links import parse_peer_uri

    for uri, text in [
        ("udp://[::1]:1", "unsupported link scheme"),
        ("tcp://[::1]", "needs a host and a port"),
        ("tcp://[::1]:1?priority=300", "priority"),
        ("tcp://[::1]:1?key=abcd", "pinned key"),
        (f"tcp://[::1]:1?password={'x' * 65}", "longer than 64"),
        ("tcp://[::1]:1?maxbackoff=4s", "at least 5s"),
    ]:
        with pytest.raises(ValueError, match=text):
            parse_peer_uri(uri)
    parsed = parse_peer_uri("tls://example.net:443?password=pw&priority=2")
    assert (parsed.sni, parsed.password, parsed.priority) == ("example.net", b"pw", 2)


def _tls_meta_with_finished(port: int, meta: bytes, wait: float) -> bytes:
    """A TLS client whose handshake ``Finished`` and ``meta`` leave in one segment (as a
    fast peer's do): the listener's TLS layer has the meta before its upgrade returns.
    Returns everything the listener sent back within ``wait`` seconds (decrypted)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing)
    got = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    sock.sendall(outgoing.read())
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("listener closed during the TLS handshake") from None
                incoming.write(data)
        tls.write(meta)
        sock.sendall(outgoing.read())  # Finished and meta together
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            incoming.write(data)
            with contextlib.suppress(ssl.SSLWantReadError):
                while chunk := tls.read(65536):
                    got += chunk
    return bytes(got)


async def test_tls_meta_arriving_with_the_handshake_is_answered_in_order() -> None:
    """The remote meta reaches the link before start_tls returns: the link answers with
    its own meta first and then its first frames (nothing read early is lost)."""
    net = PacketNetwork(os.urandom(32))
    await net.start()
    try:
        uri = await net.listen("tls://127.0.0.1:0")
        port = int(uri.rsplit(":", 1)[1])
        for _ in range(5):
            seed = os.urandom(32)
            got = await asyncio.to_thread(_tls_meta_with_finished, port, encode_meta(seed), 1.0)
            reader = MetaReader()
            meta = reader.feed(got)
            assert meta is not None and meta.public_key == net.public_key
            # the frames the link sends as it comes up (its SigReq first) followed the meta:
            # none was written to a link without a transport and lost
            peer = PeerSession(meta.public_key, 1, 0, 0, NetworkConfig(), time.monotonic())
            frames = peer.receive_data(reader.rest, time.monotonic())
            assert [f[0] for f in frames][:1] == [PacketType.SIG_REQ]
    finally:
        await net.close()
