"""QUIC by key (core.keyquic): two endpoints wired in memory, then what a stranger sends.

The wire to the real yggquic (Yggmail) is tested in tests/mail/test_yggmail_interop.py;
here the endpoint's own rules: streams both ways on one connection, the certificate key
check in both directions, garbage and connection floods refused and counted.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from core.identity import Identity
from core.keyquic import KeyQuicConfig, KeyQuicEndpoint
from core.keyquic.cert import certificate_key, node_certificate
from tests.mail.helpers import wait_for


async def _until(what: str, condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async def probe() -> bool:
        return condition()

    await wait_for(what, probe, timeout)


class Echo(asyncio.Protocol):
    """Answers every chunk upper-cased; remembers what it got."""

    def __init__(self, key: bytes, seen: list[tuple[bytes, bytes]]) -> None:
        self.key = key
        self.seen = seen

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        assert transport.get_extra_info("peer_key") == self.key

    def data_received(self, data: bytes) -> None:
        self.seen.append((self.key, data))
        self.transport.write(data.upper())


class Net:
    """Datagrams between endpoints, each delivered as from the key its sender claims."""

    def __init__(self) -> None:
        self.endpoints: dict[bytes, KeyQuicEndpoint] = {}
        self.seen: list[tuple[bytes, bytes]] = []

    def endpoint(
        self,
        seed: bytes | None = None,
        *,
        claim: bytes | None = None,
        config: KeyQuicConfig | None = None,
    ) -> KeyQuicEndpoint:
        """An endpoint with ``seed``'s certificate whose datagrams come from ``claim``
        (its own key unless a test makes it lie)."""
        seed = seed or os.urandom(32)
        key = claim or Identity.from_seed(seed).public_key
        loop = asyncio.get_running_loop()

        def send(dest: bytes, data: bytes) -> None:
            peer = self.endpoints.get(dest)
            if peer is not None:
                loop.call_soon(peer.datagram_received, key, data)

        endpoint = KeyQuicEndpoint(
            seed=seed,
            public_key=key,
            send=send,
            mtu=65000,
            stream_factory=lambda peer: Echo(peer, self.seen),
            config=config,
        )
        self.endpoints[key] = endpoint
        return endpoint

    def close(self) -> None:
        for endpoint in self.endpoints.values():
            endpoint.close()


@pytest.fixture
async def net() -> AsyncIterator[Net]:
    wired = Net()
    yield wired
    wired.close()


async def _exchange(a: KeyQuicEndpoint, b_key: bytes, text: bytes) -> bytes:
    reader, writer = await a.open_connection(b_key)
    writer.write(text)
    async with asyncio.timeout(10):
        answer = await reader.readexactly(len(text))
    writer.close()
    return answer


async def test_streams_flow_both_ways_on_one_connection(net: Net) -> None:
    a, b = net.endpoint(), net.endpoint()
    assert await _exchange(a, b.public_key, b"hello") == b"HELLO"
    # b opens a stream on the connection a dialled (yggquic uses one connection both ways)
    assert await _exchange(b, a.public_key, b"back") == b"BACK"
    assert a.stats.connections_out == 1 and b.stats.connections_out == 0
    assert b.stats.connections_in == 1 and a.stats.connections_in == 0
    assert (a.public_key, b"hello") in net.seen and (b.public_key, b"back") in net.seen


async def test_a_server_with_another_keys_certificate_is_refused(net: Net) -> None:
    a = net.endpoint()
    liar_claims = os.urandom(32)  # datagrams come from this key, the certificate is another
    net.endpoint(claim=liar_claims)
    with pytest.raises(ConnectionError, match="verification"):
        await _exchange(a, liar_claims, b"secret")
    assert a.stats.bad_certificate == 1
    assert not net.seen


async def test_a_client_with_another_keys_certificate_is_refused(net: Net) -> None:
    b = net.endpoint()
    liar = net.endpoint(claim=os.urandom(32))
    with pytest.raises(ConnectionError):
        await _exchange(liar, b.public_key, b"secret")
    await _until("b's refusal", lambda: b.stats.bad_certificate == 1)
    assert not net.seen  # no stream reached b's protocol


async def test_a_client_without_a_certificate_is_refused(net: Net) -> None:
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection
    from aioquic.quic.events import ConnectionTerminated

    b = net.endpoint()
    key = os.urandom(32)
    client = QuicConnection(
        configuration=QuicConfiguration(is_client=True, verify_mode=ssl.CERT_NONE)
    )
    loop = asyncio.get_running_loop()
    client.connect((b.public_key.hex(), 0), loop.time())
    terminated: list[ConnectionTerminated] = []

    def pump() -> None:
        for data, _ in client.datagrams_to_send(loop.time()):
            b.datagram_received(key, data)

    def deliver(dest: bytes, data: bytes) -> None:
        client.receive_datagram(data, (b.public_key.hex(), 0), loop.time())
        while (event := client.next_event()) is not None:
            if isinstance(event, ConnectionTerminated):
                terminated.append(event)
        pump()

    b._send = deliver  # b's datagrams go to this bare aioquic client
    pump()
    await _until("b's refusal", lambda: b.stats.bad_certificate == 1)
    client.handle_timer(loop.time() + 60)  # past the draining period: the close is reported
    while (event := client.next_event()) is not None:
        if isinstance(event, ConnectionTerminated):
            terminated.append(event)
    assert terminated and "verification" in terminated[0].reason_phrase
    assert not net.seen


async def test_garbage_is_dropped_and_counted(net: Net) -> None:
    b = net.endpoint()
    key = os.urandom(32)
    for junk in (b"", b"\x00", b"\x40" + os.urandom(30), b"\xc0" + os.urandom(1300)):
        b.datagram_received(key, junk)
    assert b.stats.garbage == 4
    assert b.connections() == []


async def test_a_flood_of_handshakes_from_one_key_is_bounded(net: Net) -> None:
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    config = KeyQuicConfig(new_connections_burst=3, new_connections_per_minute=1)
    b = net.endpoint(config=config)
    flooder = os.urandom(32)
    loop = asyncio.get_running_loop()
    for _ in range(20):  # twenty fresh Initials, each a new connection attempt
        client = QuicConnection(
            configuration=QuicConfiguration(is_client=True, verify_mode=ssl.CERT_NONE)
        )
        client.connect((b.public_key.hex(), 0), loop.time())
        first = client.datagrams_to_send(loop.time())[0][0]
        b.datagram_received(flooder, first)
    assert b.stats.connections_in == 3
    assert b.stats.refused_rate == 17
    assert len(b.connections()) == 3
    # another key is not held back by the flooder
    a = net.endpoint()
    assert await _exchange(a, b.public_key, b"still here") == b"STILL HERE"


async def test_handshakes_that_never_finish_are_dropped(net: Net) -> None:
    b = net.endpoint(config=KeyQuicConfig(handshake_timeout=0.2))
    nobody = os.urandom(32)  # our Initial goes nowhere
    with pytest.raises(ConnectionError, match="handshake"):
        await b.open_connection(nobody)
    assert b.stats.handshake_timeouts == 1 and b.connections() == []


def test_the_certificate_is_yggquics() -> None:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    identity = Identity.generate()
    cert, _ = node_certificate(identity.seed)
    assert certificate_key(cert) == identity.public_key
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == identity.public_key.hex() and cert.issuer == cert.subject
    assert cert.not_valid_after_utc.year == 9999
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


async def test_a_connection_silent_too_long_is_not_reused(net: Net) -> None:
    """A peer that restarted lost the connection; a fresh one replaces it on both sides."""
    a = net.endpoint(config=KeyQuicConfig(reuse_within=0.0))
    b = net.endpoint()
    assert await _exchange(a, b.public_key, b"one") == b"ONE"
    assert await _exchange(a, b.public_key, b"two") == b"TWO"
    assert a.stats.connections_out == 2 and b.stats.connections_in == 2
    await _until("b to close the replaced connection", lambda: len(b.connections()) == 1)
    assert await _exchange(b, a.public_key, b"back") == b"BACK"  # on the newest one


class _Refuser(asyncio.Protocol):
    """Closes every stream at once, as an SMTP server over its connection cap does."""

    def __init__(self, made: list[int]) -> None:
        self.made = made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made.append(1)
        assert isinstance(transport, asyncio.Transport)
        transport.write(b"421 busy\r\n")
        transport.close()


async def test_data_after_a_stream_was_closed_here_opens_nothing(net: Net) -> None:
    a, b = net.endpoint(), net.endpoint()
    made: list[int] = []
    b._stream_factory = lambda key: _Refuser(made)
    reader, writer = await a.open_connection(b.public_key)
    for _ in range(5):  # in flight together: b closes the stream on the first
        writer.write(b"x" * 1000)
    async with asyncio.timeout(10):
        assert await reader.readline() == b"421 busy\r\n"
    await asyncio.sleep(0.1)
    assert made == [1]  # the rest of that stream opened no new session
    writer.close()


async def test_the_daemon_backend_says_it_carries_no_raw_session_traffic(tmp_path: Path) -> None:
    from core.backends.yggdrasil.backend import YggdrasilBackend
    from core.config import NodeConfig
    from core.errors import MeshError
    from core.node import Node
    from core.types import NO_KEY_DATAGRAMS

    config = NodeConfig(data_dir=tmp_path, backend="yggdrasil")
    node = Node(config, YggdrasilBackend(config, None), identity=None, backend_reason="test")
    assert not node.key_datagrams_supported
    with pytest.raises(MeshError, match="IPv6 only"):
        node.key_datagrams()
    with pytest.raises(MeshError, match="IPv6 only"):
        await node.open_key_quic(lambda key: asyncio.Protocol())
    assert "embedded" in NO_KEY_DATAGRAMS  # the reason says what to do
