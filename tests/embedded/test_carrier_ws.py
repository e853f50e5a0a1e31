"""ws:// and wss:// between embedded nodes, and a ws:// listener under hostile input."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from core.embedded import PacketNetwork
from core.embedded.carriers.http_proxy import Proxy, proxy_from_environment
from core.embedded.carriers.ws import MAX_MESSAGE, WSCarrier
from core.embedded.links import make_tls_contexts
from core.embedded.meta import encode_meta
from tests.embedded.carrier_util import Relay, hostport, nets, until, up

pytestmark = pytest.mark.timeout(60)


def _stat(net: PacketNetwork, name: str) -> int:
    return net.carrier_stats().get("ws", {}).get(name, 0)


async def _http(uri: str, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*hostport(uri))
    try:
        writer.write(request)
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()


async def test_two_embedded_nodes_link_over_ws_with_a_path_and_carry_packets() -> None:
    async with nets(2) as (a, b):
        got: list[bytes] = []
        b.set_handler(lambda _src, data: got.append(data))
        uri = await b.listen("ws://[::1]:0/ygg")
        assert uri.startswith("ws://[::1]:") and uri.endswith("/ygg")
        await a.add_peer(f"{uri}?key={b.public_key.hex()}")
        await until(lambda: up(a) == [b.public_key] and up(b) == [a.public_key])
        assert a.peers()[0].uri == uri
        for _ in range(50):  # the first packets wait for the path lookup
            a.send(b.public_key, b"\xffprobe")
            with contextlib.suppress(AssertionError):
                await until(lambda: got, timeout=0.2)
                break
        got.clear()
        big = os.urandom(a.mtu - 1)  # several 32 KiB WebSocket messages per link frame
        for i in range(20):
            a.send(b.public_key, bytes([i]) + big)
        await until(lambda: len(got) == 20)
        assert [d[0] for d in got] == list(range(20)) and all(d[1:] == big for d in got)


async def test_wss_dials_a_ws_listener_behind_a_tls_terminating_proxy() -> None:
    """The deployment upstream documents: TLS ends at a reverse proxy, ws:// behind it."""
    async with contextlib.AsyncExitStack() as stack, nets(2) as (a, b):
        backend = hostport(await b.listen("ws://127.0.0.1:0"))
        tls = make_tls_contexts(os.urandom(32))[0]
        terminator = await stack.enter_async_context(Relay(backend, ssl=tls))
        stack.push_async_callback(a.close)  # the links end before the proxy does
        await a.add_peer(f"wss://127.0.0.1:{terminator.port}/?key={b.public_key.hex()}")
        await until(lambda: up(a) == [b.public_key] and up(b) == [a.public_key])
        assert a.peers()[0].uri == f"wss://127.0.0.1:{terminator.port}"


async def test_the_listener_answers_health_checks_without_a_link() -> None:
    async with nets(1) as (net,):
        uri = await net.listen("ws://127.0.0.1:0")
        for path in ("/health", "/healthz"):
            reply = await _http(uri, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(b"\r\n\r\nOK")
        await until(lambda: net.pending_count == 0 and net.inbound_open == 0)
        assert net.peers() == []


async def test_an_upgrade_without_the_ygg_ws_subprotocol_is_refused_and_counted() -> None:
    async with nets(1) as (net,):
        uri = await net.listen("ws://127.0.0.1:0")
        for subprotocols in (None, ["chat"]):
            with pytest.raises(InvalidStatus) as info:
                async with connect(uri, subprotocols=subprotocols, open_timeout=10):  # type: ignore[arg-type]
                    pass
            assert info.value.response.status_code == 400
            assert b"ygg-ws" in info.value.response.body
        assert _stat(net, "refused") == 2
        await until(lambda: net.inbound_open == 0)


async def test_a_foreign_browser_origin_is_refused_unless_the_uri_allows_it() -> None:
    async with nets(1) as (net,):
        strict = await net.listen("ws://127.0.0.1:0")
        allowing = await net.listen("ws://127.0.0.1:0?origin=*.example.org")
        hello = encode_meta(os.urandom(32))
        with pytest.raises(InvalidStatus) as info:
            async with connect(strict, subprotocols=["ygg-ws"], origin="https://evil.example"):  # type: ignore[list-item]
                pass
        assert info.value.response.status_code == 403
        async with connect(
            allowing,
            subprotocols=["ygg-ws"],  # type: ignore[list-item]
            origin="https://peers.example.org",  # type: ignore[arg-type]
        ) as ws:
            await ws.send(hello)
            assert len(await asyncio.wait_for(ws.recv(), 10)) > 0  # the node's own meta


async def test_an_oversize_message_closes_the_connection_and_is_counted() -> None:
    async with nets(1) as (net,):
        uri = await net.listen("ws://127.0.0.1:0")
        async with connect(uri, subprotocols=["ygg-ws"], max_size=None) as ws:  # type: ignore[list-item]
            await ws.send(b"\x00" * (MAX_MESSAGE + 1))
            with pytest.raises(ConnectionClosed) as info:
                async with asyncio.timeout(10):
                    while True:
                        await ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        assert _stat(net, "oversize") == 1
        await until(lambda: net.inbound_open == 0)


async def test_text_messages_and_non_http_bytes_are_garbage() -> None:
    async with nets(1) as (net,):
        uri = await net.listen("ws://127.0.0.1:0")
        async with connect(uri, subprotocols=["ygg-ws"]) as ws:  # type: ignore[list-item]
            await ws.send("text is not the link")
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(10):
                    while True:
                        await ws.recv()
        reply = await _http(uri, os.urandom(200).replace(b"\n", b"") + b"\r\n\r\n")
        assert not reply.startswith(b"HTTP/1.1 101")
        await until(lambda: _stat(net, "garbage") == 2)
        await until(lambda: net.inbound_open == 0)


async def test_stalled_upgrades_are_freed_at_the_handshake_deadline_and_capped_per_source() -> None:
    async with nets(2, handshake_timeout=1.0, max_links_per_source=4) as (net, good):
        uri = await net.listen("ws://127.0.0.1:0")
        held = [socket.create_connection(hostport(uri)) for _ in range(10)]
        try:
            await until(lambda: _stat(net, "refused") == 6)
            assert net.inbound_open == 4
            await until(lambda: net.inbound_open == 0 and net.pending_count == 0)
        finally:
            for s in held:
                s.close()
        await good.add_peer(uri)  # freed: a real peer gets in
        await until(lambda: up(net) == [good.public_key])


async def test_wss_cannot_listen_and_says_why() -> None:
    async with nets(1) as (net,):
        with pytest.raises(ValueError, match="reverse proxy"):
            await net.listen("wss://127.0.0.1:0")


def test_wss_dial_uses_sni_for_names_only() -> None:
    from core.embedded.links import parse_peer_uri

    assert parse_peer_uri("wss://peer.example.net:443/ws").sni == "peer.example.net"
    assert parse_peer_uri("wss://[2001:db8::1]:443").sni is None
    assert parse_peer_uri("ws://h:80/a/b?key=" + "00" * 32).path == "/a/b"
    assert ssl.HAS_SNI


@pytest.mark.parametrize("scheme", ["ws", "wss"])
async def test_a_dial_goes_through_an_http_connect_proxy(scheme: str) -> None:
    async with contextlib.AsyncExitStack() as stack, nets(1) as (server,):
        connect_proxy = await stack.enter_async_context(Relay())
        proxy = Proxy("127.0.0.1", connect_proxy.port, "Basic dTpw")
        dialler = PacketNetwork(
            os.urandom(32), carriers={scheme: WSCarrier(scheme, proxy_for=lambda _s, _h: proxy)}
        )
        await dialler.start()
        stack.push_async_callback(dialler.close)  # the links end before the relays do
        target = hostport(await server.listen("ws://127.0.0.1:0/ygg"))
        if scheme == "wss":  # TLS ends at a reverse proxy in front of the ws listener
            tls = make_tls_contexts(os.urandom(32))[0]
            terminator = await stack.enter_async_context(Relay(target, ssl=tls))
            target = ("127.0.0.1", terminator.port)
        await dialler.add_peer(f"{scheme}://127.0.0.1:{target[1]}/ygg")
        await until(lambda: up(dialler) == [server.public_key])
        [request] = connect_proxy.requests
        assert request.startswith(f"CONNECT 127.0.0.1:{target[1]} HTTP/1.1\r\n".encode())
        assert b"Proxy-Authorization: Basic dTpw\r\n" in request


async def test_a_proxy_that_refuses_connect_is_a_dial_error_saying_so() -> None:
    answer = b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"
    async with Relay(answer=answer) as refusing:
        proxy = Proxy("127.0.0.1", refusing.port)
        dialler = PacketNetwork(
            os.urandom(32), carriers={"ws": WSCarrier("ws", proxy_for=lambda _s, _h: proxy)}
        )
        await dialler.start()
        try:
            await dialler.add_peer("ws://127.0.0.1:9/")
            await until(lambda: dialler.peers()[0].last_error is not None)
            assert "proxy refused CONNECT" in str(dialler.peers()[0].last_error)
            assert "407" in str(dialler.peers()[0].last_error)
        finally:
            await dialler.close()


def test_the_proxy_comes_from_the_environment_as_upstream_reads_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert proxy_from_environment("wss", "peer.example.net") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://alice:s%40cret@proxy.corp:3128")
    monkeypatch.setenv("NO_PROXY", "internal.corp,.lan:8080")
    found = proxy_from_environment("wss", "peer.example.net")
    assert found == Proxy("proxy.corp", 3128, "Basic YWxpY2U6c0BjcmV0")
    assert proxy_from_environment("ws", "peer.example.net") is None  # HTTP_PROXY unset
    assert proxy_from_environment("wss", "a.internal.corp") is None
    assert proxy_from_environment("wss", "box.lan") is None
    assert proxy_from_environment("wss", "127.0.0.1") is None  # loopback never
    assert proxy_from_environment("wss", "::1") is None
    monkeypatch.setenv("HTTPS_PROXY", "socks5://proxy.corp:1080")
    with pytest.raises(ValueError, match="only http:// proxies"):
        proxy_from_environment("wss", "peer.example.net")
