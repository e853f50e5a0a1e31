"""The admin protocol: byte-exact replies captured from real 0.5.12 and 0.4.7 daemons,
a fake admin endpoint speaking garbage, and a real daemon that vanishes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from core.address import address_for_key
from core.backends.yggdrasil import probe_daemon
from core.backends.yggdrasil.admin import (
    AdminClient,
    AdminCommandError,
    AdminProtocolError,
    DaemonUnreachableError,
    ReplyScanner,
    encode_request,
    parse_endpoint,
    parse_peers,
    parse_self,
    parse_sessions,
    unwrap_reply,
)
from tests.conftest import require

DATA = Path(__file__).parent / "data"
YGG = "/usr/sbin/yggdrasil"


def capture(name: str) -> bytes:
    return (DATA / f"{name}.json").read_bytes()


def reply(name: str) -> dict[str, object]:
    scanner = ReplyScanner()
    scanner.feed(capture(name))
    got = scanner.next_reply()
    assert got is not None
    return got


# -- sans-IO -------------------------------------------------------------------------


def test_request_is_what_yggdrasilctl_sends_plus_keepalive() -> None:
    raw = encode_request("addPeer", {"uri": "tls://[fd00::1]:1"})
    assert raw.endswith(b"\n")
    assert json.loads(raw) == {
        "request": "addPeer",
        "arguments": {"uri": "tls://[fd00::1]:1"},
        "keepalive": True,
    }


def test_scanner_cuts_replies_fed_byte_by_byte() -> None:
    data = capture("v05_a_getPeers") + capture("v04_a_getSelf")
    scanner = ReplyScanner()
    got = []
    for i in range(len(data)):
        scanner.feed(data[i : i + 1])
        while (r := scanner.next_reply()) is not None:
            got.append(r)
    assert [unwrap_reply(r, "x") for r in got] == [
        json.loads(capture("v05_a_getPeers"))["response"],
        json.loads(capture("v04_a_getSelf"))["response"],
    ]
    assert scanner.pending == 0


def test_scanner_ignores_braces_inside_strings() -> None:
    text = {"status": "error", "error": 'bad } "{ [ \\', "response": None}
    scanner = ReplyScanner()
    scanner.feed(json.dumps(text).encode()[:-1])
    assert scanner.next_reply() is None
    scanner.feed(b"}")
    assert scanner.next_reply() == text


@pytest.mark.parametrize(
    "garbage",
    [b"HTTP/1.1 400 Bad Request\r\n\r\n", b"[1, 2]", b"\x00\xff", b'{"status": tru}'],
)
def test_scanner_rejects_garbage(garbage: bytes) -> None:
    scanner = ReplyScanner()
    scanner.feed(garbage)
    with pytest.raises(AdminProtocolError):
        scanner.next_reply()
    with pytest.raises(AdminProtocolError):  # and stays broken
        scanner.feed(b"{}")


def test_scanner_bounds_the_reply_size() -> None:
    scanner = ReplyScanner(max_size=1000)
    scanner.feed(b'{"status": "success", "response": "' + b"x" * 2000)
    with pytest.raises(AdminProtocolError, match="exceeds 1000 bytes"):
        scanner.next_reply()


def test_get_self_0_5_and_0_4() -> None:
    new = parse_self(unwrap_reply(reply("v05_a_getSelf"), "getSelf"))
    assert new.generation == "0.5" and new.build_version == "0.5.12"
    assert new.address == address_for_key(new.key) and new.routing_entries == 2
    assert str(new.subnet) == "304:f7b9:cff7:92e1::/64"
    old = parse_self(unwrap_reply(reply("v04_a_getSelf"), "getSelf"))
    assert old.generation == "0.4" and old.coords == (1,) and old.build_version == "unknown"
    assert str(old.address) == "200:8abb:41c:6efb:f75a:aee:3a39:aa7e"


def test_get_peers_0_5_and_0_4() -> None:
    (inbound,) = parse_peers(unwrap_reply(reply("v05_a_getPeers"), "getPeers"))
    assert inbound.up and inbound.inbound and inbound.uri == "tls://[fd6c:6200::2]:40350"
    assert inbound.rx_bytes == 1471 and inbound.uptime and inbound.last_error is None
    assert inbound.key and inbound.address == str(address_for_key(inbound.key))
    (outbound,) = parse_peers(unwrap_reply(reply("v05_b_getPeers"), "getPeers"))
    assert not outbound.inbound and outbound.last_error and "refused" in outbound.last_error
    (old,) = parse_peers(unwrap_reply(reply("v04_a_getPeers"), "getPeers"))
    assert old.up and not old.inbound and old.uri == "tls://[fd6c:6200::2]:40020"
    assert old.port == 1 and old.address == "201:9203:d337:1931:bd73:4977:a069:2ff8"


def test_0_4_0_map_shapes_are_understood() -> None:
    key = "5b7f0b3239b390a32da217e5b401f2303a0f668ed139c76320812289b6d58e9d"
    addr = str(address_for_key(bytes.fromhex(key)))
    peers = parse_peers({"peers": {addr: {"key": key, "port": 1, "remote": "tcp://x:1"}}})
    assert peers[0].address == addr and peers[0].up
    sessions = parse_sessions({"sessions": {addr: {"key": key}}})
    assert str(sessions[0].address) == addr


def test_get_sessions() -> None:
    (s,) = parse_sessions(unwrap_reply(reply("v05_a_getSessions"), "getSessions"))
    assert str(s.address) == "201:ba74:43d3:f96:c518:a4cb:d689:7899"
    assert s.key.hex().startswith("5162ef0b") and s.rx_bytes == 105
    (old,) = parse_sessions(unwrap_reply(reply("v04_a_getSessions"), "getSessions"))
    assert old.key.hex().startswith("5b7f0b32")


def test_an_address_that_is_not_the_keys_is_refused() -> None:
    body = json.loads(capture("v05_a_getSessions"))["response"]
    body["sessions"][0]["address"] = "200::1"
    with pytest.raises(AdminProtocolError, match="does not belong to its key"):
        parse_sessions(body)


def test_daemon_refusal_and_0_4_panic_reply() -> None:
    with pytest.raises(AdminCommandError, match="Unknown action 'bogus'"):
        unwrap_reply(reply("v04_a_bogus"), "bogus")
    with pytest.raises(AdminCommandError, match="Check your syntax"):
        unwrap_reply({"error": "Check your syntax and input types"}, "addPeer")
    with pytest.raises(AdminProtocolError, match="no status"):
        unwrap_reply({"hello": 1}, "getSelf")


@pytest.mark.parametrize(
    ("text", "kind", "where"),
    [
        ("unix:///var/run/yggdrasil.sock", "unix", "/var/run/yggdrasil.sock"),
        ("/tmp/y.sock", "unix", "/tmp/y.sock"),
        ("tcp://localhost:9001", "tcp", "localhost:9001"),
        ("tcp://[::1]:9001", "tcp", "::1:9001"),
        ("127.0.0.1:9001", "tcp", "127.0.0.1:9001"),
    ],
)
def test_endpoints(text: str, kind: str, where: str) -> None:
    ep = parse_endpoint(text)
    assert ep.kind == kind
    assert (ep.path if kind == "unix" else f"{ep.host}:{ep.port}") == where


def test_bad_endpoint_says_what_is_expected() -> None:
    with pytest.raises(Exception, match="unix:///path nor tcp://host:port"):
        parse_endpoint("http://nope")


# -- a fake admin endpoint (the remote party under test) --------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def fake_admin(tmp_path: Path) -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    servers: list[asyncio.Server] = []

    async def serve(handler: Handler) -> str:
        async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await handler(reader, writer)
            except ConnectionError:
                pass
            finally:
                writer.close()

        path = tmp_path / f"fake{len(servers)}.sock"
        servers.append(await asyncio.start_unix_server(closing, str(path)))
        return f"unix://{path}"

    yield serve
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_garbage_from_the_endpoint_is_a_clear_error(fake_admin) -> None:  # type: ignore[no-untyped-def]
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()

    client = AdminClient(await fake_admin(http))
    with pytest.raises(AdminProtocolError, match="not a yggdrasil admin reply"):
        await client.get_self()
    await client.close()


async def test_a_reply_of_the_wrong_shape(fake_admin) -> None:  # type: ignore[no-untyped-def]
    async def wrong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b'{"status": "success", "response": {"key": "zz"}}\n')
        await reader.readline()
        writer.write(b'{"status": "success", "response": {"peers": 7}}\n')
        await reader.read()

    client = AdminClient(await fake_admin(wrong))
    with pytest.raises(AdminProtocolError, match="key is not 64 hex"):
        await client.get_self()
    with pytest.raises(AdminProtocolError, match="neither a list nor a map"):
        await client.get_peers()
    await client.close()


async def test_a_daemon_that_hangs_up_mid_reply(fake_admin) -> None:  # type: ignore[no-untyped-def]
    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b'{"status": "succ')
        await writer.drain()

    client = AdminClient(await fake_admin(half))
    with pytest.raises(DaemonUnreachableError, match="closed the admin connection"):
        await client.get_self()
    await client.close()


async def test_a_silent_endpoint_times_out(fake_admin) -> None:  # type: ignore[no-untyped-def]
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    client = AdminClient(await fake_admin(silent), timeout=0.3)
    with pytest.raises(DaemonUnreachableError, match=r"no answer within 0\.3 s"):
        await client.get_self()
    await client.close()


async def test_an_endless_reply_is_cut_off(fake_admin) -> None:  # type: ignore[no-untyped-def]
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b'{"status": "success", "response": ["')
        for _ in range(1000):
            writer.write(b"a" * 65536)
            await writer.drain()

    client = AdminClient(await fake_admin(endless), max_reply=256 * 1024)
    with pytest.raises(AdminProtocolError, match="exceeds 262144 bytes"):
        await client.get_self()
    await client.close()


async def test_no_daemon_says_what_to_do(tmp_path: Path) -> None:
    client = AdminClient(f"unix://{tmp_path}/missing.sock")
    with pytest.raises(DaemonUnreachableError, match="no yggdrasil daemon is listening"):
        await client.get_self()
    assert not await probe_daemon(f"unix://{tmp_path}/missing.sock")


# -- a real daemon (no TUN, admin socket only) ------------------------------------------


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], list[str]]]:
    require(os.path.exists(YGG), f"needs the yggdrasil daemon at {YGG}")
    config = json.loads(subprocess.run([YGG, "-genconf", "-json"], capture_output=True).stdout)
    sock = tmp_path / "admin.sock"
    config.update(
        AdminListen=f"unix://{sock}", IfName="none", MulticastInterfaces=[], Listen=[], Peers=[]
    )
    path = tmp_path / "y.conf"
    path.write_text(json.dumps(config))
    cmd = [YGG, "-useconffile", str(path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"unix://{sock}", proc, cmd
    finally:
        proc.kill()
        proc.wait()


def _spawn(cmd: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def _until_up(endpoint: str) -> None:
    for _ in range(200):
        if await probe_daemon(endpoint):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("daemon did not come up")


async def test_real_daemon_keepalive_vanish_and_return(daemon) -> None:  # type: ignore[no-untyped-def]
    endpoint, proc, cmd = daemon
    await _until_up(endpoint)
    client = AdminClient(endpoint, timeout=2)
    restarted: subprocess.Popen[bytes] | None = None
    try:
        first = await client.get_self()
        assert first.generation == "0.5" and (await client.get_self()).key == first.key
        assert await client.get_peers() == [] and await client.get_sessions() == []
        with pytest.raises(AdminCommandError, match="refused addPeer: unable to parse"):
            await client.add_peer("tls://[::1")
        with pytest.raises(AdminCommandError, match="peer is not configured"):
            await client.remove_peer("tls://[::1]:5")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with pytest.raises(DaemonUnreachableError, match="no yggdrasil daemon is listening"):
            await client.get_self()
        restarted = _spawn(cmd)
        await _until_up(endpoint)
        assert (await client.get_self()).key == first.key  # reconnected on its own
    finally:
        if restarted is not None:
            restarted.kill()
            restarted.wait()
        await client.close()
