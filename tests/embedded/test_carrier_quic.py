"""quic:// between embedded nodes, and a quic:// listener under hostile input."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import ssl

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from tests.embedded.carrier_util import hostport, nets, until, up

pytestmark = pytest.mark.timeout(60)


async def test_two_embedded_nodes_link_over_quic_and_carry_packets() -> None:
    async with nets(2) as (a, b):
        got: list[tuple[bytes, bytes]] = []
        b.set_handler(lambda src, data: got.append((src, data)))
        uri = await b.listen("quic://[::1]:0")
        assert uri.startswith("quic://[::1]:") and not uri.endswith(":0")
        await a.add_peer(f"{uri}?key={b.public_key.hex()}")
        await until(lambda: up(a) == [b.public_key] and up(b) == [a.public_key])
        [info] = a.peers()
        assert info.uri == uri and not info.inbound
        for _ in range(50):  # the first packets wait for the path lookup
            a.send(b.public_key, b"\xffprobe")
            with contextlib.suppress(AssertionError):
                await until(lambda: got, timeout=0.2)
                break
        got.clear()
        big = os.urandom(a.mtu - 1)  # many QUIC packets for one link frame
        for i in range(20):
            a.send(b.public_key, bytes([i]) + big)
        await until(lambda: len(got) == 20)
        assert [d[0] for _s, d in got] == list(range(20))
        assert all(src == a.public_key and d[1:] == big for src, d in got)


async def test_a_quic_link_with_the_wrong_pinned_key_or_password_never_comesup(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="core.embedded")
    async with nets(3) as (server, wrong_key, wrong_password):
        uri = await server.listen("quic://127.0.0.1:0?password=pw")
        await wrong_key.add_peer(f"{uri}?password=pw&key={os.urandom(32).hex()}")
        await wrong_password.add_peer(f"{uri}?password=nope")
        await until(lambda: "does not match the pinned ?key=" in caplog.text)
        await until(lambda: "password does not match" in caplog.text)
        # the listener may see the wrong-key link up until the dialler drops it
        await until(lambda: up(server) == [])
        assert up(wrong_key) == [] and up(wrong_password) == []


async def test_garbage_datagrams_are_dropped_and_counted_and_the_listener_still_serves() -> None:
    async with nets(2) as (server, client):
        uri = await server.listen("quic://127.0.0.1:0")
        rng = random.Random(22)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for size in [0, 1, 5, 20, 1199, 1200, 1500] + [
                rng.randrange(1, 1400) for _ in range(93)
            ]:
                sock.sendto(rng.randbytes(size), hostport(uri))
            stats = server.carrier_stats
            await until(lambda: stats().get("quic", {}).get("garbage", 0) == 100)
        finally:
            sock.close()
        assert server.inbound_open == 0 and server.pending_count == 0
        await client.add_peer(uri)
        await until(lambda: up(server) == [client.public_key])


def _initial() -> bytes:
    """The first datagram of a real QUIC client (a full-size Initial, new connection ID)."""
    config = QuicConfiguration(is_client=True, verify_mode=ssl.CERT_NONE)
    quic = QuicConnection(configuration=config)
    quic.connect(("127.0.0.1", 1), now=0.0)
    [(data, _addr), *_] = quic.datagrams_to_send(now=0.0)
    return data


async def test_an_initial_flood_is_refused_beyond_the_caps_counted_and_freed() -> None:
    async with nets(2, handshake_timeout=1.0, max_links_per_source=8) as (server, client):
        uri = await server.listen("quic://127.0.0.1:0")
        initials = [_initial() for _ in range(60)]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for data in initials:
                sock.sendto(data, hostport(uri))
            stats = server.carrier_stats
            await until(lambda: stats().get("quic", {}).get("refused", 0) == 52)
            assert server.inbound_open == 8  # the per-source cap holds
            # nobody finishes: every handshake is freed at the deadline
            await until(lambda: server.inbound_open == 0 and server.pending_count == 0)
        finally:
            sock.close()
        await client.add_peer(uri)  # and the listener serves again
        await until(lambda: up(server) == [client.public_key])


async def test_a_peer_that_stops_or_resets_the_link_stream_ends_the_link_cleanly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A QUIC client that is not yggdrasil-go (aioquic's own) links, then stops reading
    our stream (STOP_SENDING) or resets its own: the link ends, nothing raises."""
    from aioquic.asyncio.client import connect
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.quic.events import QuicEvent, StreamDataReceived

    from core.embedded.meta import encode_meta

    class Deaf(QuicConnectionProtocol):
        def quic_event_received(self, event: QuicEvent) -> None:
            if not isinstance(event, StreamDataReceived):  # what the node sends: dropped
                super().quic_event_received(event)

    caplog.set_level(logging.ERROR)
    async with nets(1) as (server,):
        uri = await server.listen("quic://127.0.0.1:0")
        for how in ("stop", "reset"):
            config = QuicConfiguration(is_client=True, verify_mode=ssl.CERT_NONE)
            async with connect(
                *hostport(uri), configuration=config, create_protocol=Deaf
            ) as client:
                quic = client._quic
                sid = quic.get_next_available_stream_id()
                quic.send_stream_data(sid, encode_meta(os.urandom(32)))
                client.transmit()
                await until(lambda: len(up(server)) == 1)
                if how == "stop":
                    quic.stop_stream(sid, 7)
                else:
                    quic.reset_stream(sid, 7)
                client.transmit()
                await until(lambda: up(server) == [] and server.pending_count == 0)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
