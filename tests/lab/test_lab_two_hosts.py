"""Two hosts peered directly (yggdrasil 0.5.12): nodes attached to each daemon."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.address import address_for_key
from core.backend import Backend
from core.events import Subscription
from tests.lab.fixtures import echo_handler, finish, open_node, two_host_lab
from tests.lab.lab import Lab

PORT = 4100


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from two_host_lab("two")


async def test_stream_echo_and_peer_key_across_hosts(lab: Lab) -> None:
    a, b = lab.hosts["a"], lab.hosts["b"]
    assert a.daemon and b.daemon
    async with await open_node(a) as na, await open_node(b) as nb:
        assert na.key.hex() == a.daemon.key and nb.address == b.daemon.address
        assert isinstance(na.backend, Backend)  # the runtime Protocol check, once started
        await nb.start_server(echo_handler, PORT)
        reader, writer = await na.open_connection(nb.address, PORT)
        hello = json.loads(await asyncio.wait_for(reader.readline(), 10))
        assert hello == {"peer": str(na.address), "peer_key": na.key.hex()}
        assert writer.get_extra_info("peer_key") == nb.key
        payload = bytes(range(256)) * 1024
        writer.write(payload)
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(len(payload)), 20) == payload
        await finish(reader, writer)


async def test_mesh_streams_have_nagle_off_on_both_ends(lab: Lab) -> None:
    # Dialogue protocols (SMTP, IMAP, chat) must not wait ~40 ms for delayed ACKs.
    a, b = lab.hosts["a"], lab.hosts["b"]
    accepted: asyncio.Queue[socket.socket] = asyncio.Queue()
    served = asyncio.Event()

    async def keep(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.put_nowait(writer.get_extra_info("socket"))
        await reader.read()
        writer.close()
        await writer.wait_closed()
        served.set()

    async with await open_node(a) as na, await open_node(b) as nb:
        await nb.start_server(keep, PORT + 1)
        _reader, writer = await na.open_connection(nb.address, PORT + 1)
        server_side = await asyncio.wait_for(accepted.get(), 10)
        for sock in (writer.get_extra_info("socket"), server_side):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        writer.close()
        await writer.wait_closed()
        await asyncio.wait_for(served.wait(), 10)  # both ends closed before the nodes go


async def test_status_shows_daemon_peers_and_sessions(lab: Lab) -> None:
    a, b = lab.hosts["a"], lab.hosts["b"]
    assert a.daemon and b.daemon
    async with await open_node(a) as na:
        status = await na.status()
        assert status["backend"] == "yggdrasil"
        assert status["identity"] == "daemon's key"
        peers = status["peers"]
        assert [p["key"] for p in peers] == [b.daemon.key]
        assert peers[0]["up"] is True and peers[0]["inbound"] is True
        assert peers[0]["address"] == str(b.daemon.address)
        backend = status["backend_status"]
        assert backend["mode"] == "attached" and backend["tun"] == "lb-tun"
        assert backend["daemon"]["build_version"] == "0.5.12"


async def test_ping_across(lab: Lab) -> None:
    a, b = lab.hosts["a"], lab.hosts["b"]
    assert b.daemon
    async with await open_node(a) as na:
        rtts = await na.ping(b.daemon.address, count=3, interval=0.1, timeout=5)
        assert len(rtts) == 3 and all(r is not None and 0 < r < 5 for r in rtts)
        key_target = f"{b.daemon.key}@mesh"
        assert (await na.ping(key_target, count=1, timeout=5))[0] is not None


async def test_ping_to_nobody_is_lost(lab: Lab) -> None:
    a = lab.hosts["a"]
    nobody = address_for_key(bytes.fromhex("11" * 32))
    async with await open_node(a) as na:
        assert await na.ping(nobody, count=2, interval=0.05, timeout=0.5) == [None, None]


async def test_datagrams_carry_mesh_source(lab: Lab) -> None:
    a, b = lab.hosts["a"], lab.hosts["b"]
    got: asyncio.Queue[tuple[bytes, str]] = asyncio.Queue()
    made: list[asyncio.BaseTransport] = []

    class Sink(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            made.append(transport)

        def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
            got.put_nowait((data, str(addr[0])))

    async with await open_node(a) as na, await open_node(b) as nb:
        rx, _ = await nb.create_datagram_endpoint(Sink, local_port=PORT + 1)
        tx, _ = await na.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote=(nb.address, PORT + 1)
        )
        try:
            for _ in range(50):  # the first datagrams may race the session set-up
                tx.sendto(b"hello")
                try:
                    data, source = await asyncio.wait_for(got.get(), 0.2)
                    break
                except TimeoutError:
                    continue
            else:
                pytest.fail("no datagram arrived over the mesh")
            assert data == b"hello" and source == str(na.address)
            assert made == [rx] and isinstance(rx, asyncio.DatagramTransport)
            assert rx.get_extra_info("sockname")[0] == str(nb.address)
            assert tx.get_extra_info("peername")[0] == str(nb.address)
            rx.sendto(b"back", (str(na.address), tx.get_extra_info("sockname")[1]))
        finally:
            tx.close()
            rx.close()


def _route_via_veth(src: Lab, target: str) -> None:
    a, b = src.hosts["a"], src.hosts["b"]
    a.run(
        "ip", "-6", "route", "replace", f"{target}/128", "via", str(b.link_address(a)),
        "dev", a.link_ifname(b), "src", str(a.link_address(b)),
    )  # fmt: skip


async def test_non_mesh_source_is_refused(lab: Lab) -> None:
    """A TCP connection to B's mesh address that arrives over the veth from A's ULA
    address never reaches the service: the TUN-bound socket does not see it at all
    (RST), and with the device binding off the node's guard drops it."""
    a, b = lab.hosts["a"], lab.hosts["b"]
    assert b.daemon
    target = str(b.daemon.address)
    seen: list[object] = []

    async def service(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(writer.get_extra_info("peername"))
        writer.close()

    _route_via_veth(lab, target)
    try:
        for bind_to_device, port in ((True, PORT + 2), (False, PORT + 3)):
            async with await open_node(b, yggdrasil={"bind_to_device": bind_to_device}) as nb:
                await nb.start_server(service, port)
                sock = a.socket(socket.AF_INET6, socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.bind((str(a.link_address(b)), 0))
                loop = asyncio.get_running_loop()
                with sock:
                    try:
                        await asyncio.wait_for(loop.sock_connect(sock, (target, port)), 5)
                    except ConnectionRefusedError:
                        assert bind_to_device, "the kernel refused although no device binding"
                    else:
                        assert not bind_to_device, "accepted on the veth despite SO_BINDTODEVICE"
                        data = await asyncio.wait_for(loop.sock_recv(sock, 100), 5)
                        assert data == b""  # closed by the guard before any byte
                await asyncio.sleep(0.2)
        assert seen == []
    finally:
        a.run("ip", "-6", "route", "del", f"{target}/128", check=False)


async def test_forged_mesh_source_on_the_lan_is_not_delivered(lab: Lab) -> None:
    """A neighbour that puts a 200::/7 source on a UDP packet sent over the veth
    cannot reach a node's datagram endpoint: it is bound to the TUN."""
    a, b = lab.hosts["a"], lab.hosts["b"]
    assert b.daemon
    target = str(b.daemon.address)
    forged = str(address_for_key(bytes.fromhex("22" * 32)))
    got: list[bytes] = []

    class Sink(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
            got.append(data)

    _route_via_veth(lab, target)
    a.run("ip", "-6", "addr", "add", f"{forged}/128", "dev", a.link_ifname(b), "nodad")
    try:
        async with await open_node(b) as nb:
            rx, _ = await nb.create_datagram_endpoint(Sink, local_port=PORT + 4)
            sock = a.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            with sock:
                sock.bind((forged, 0))
                for _ in range(5):
                    sock.sendto(b"forged", (target, PORT + 4))
            await asyncio.sleep(0.5)
            rx.close()
        assert got == []
    finally:
        a.run("ip", "-6", "addr", "del", f"{forged}/128", "dev", a.link_ifname(b), check=False)
        a.run("ip", "-6", "route", "del", f"{target}/128", check=False)


async def test_peer_events_and_add_remove_peer(lab: Lab) -> None:
    a, b = lab.hosts["a"], lab.hosts["b"]
    assert a.daemon and b.daemon
    uri = a.peer_uri(b, 7001)
    async with await open_node(b) as nb, nb.events.subscribe() as events:
        await nb.remove_peer(uri)
        kinds = await _collect(events, {"peer.down"})
        assert "peer.removed" in kinds
        await nb.add_peer(uri)
        kinds = await _collect(events, {"peer.up"})
        assert "peer.added" in kinds
    lab.wait_peered(a.daemon, b.daemon)


async def _collect(events: Subscription, until: set[str], timeout: float = 20) -> list[str]:
    kinds: list[str] = []

    async def run() -> None:
        while not until <= set(kinds):
            event = await events.get()
            assert event is not None
            kinds.append(event.kind)

    await asyncio.wait_for(run(), timeout)
    return kinds


PING_SCRIPT = """
import asyncio, sys
from pathlib import Path
from core.config import NodeConfig
from core.errors import MeshError
from core.node import Node

async def main():
    cfg = NodeConfig(data_dir=Path(sys.argv[1]), backend="yggdrasil", admin_endpoint=sys.argv[2])
    async with await Node.open(cfg) as node:
        try:
            rtts = await node.ping(sys.argv[3], count=2, interval=0.1, timeout=5)
        except MeshError as exc:
            print("ERROR", exc)
            return
        print("RTTS", sum(r is not None for r in rtts))

asyncio.run(main())
"""


def test_ping_without_raw_socket_privilege(lab: Lab, tmp_path: Path) -> None:
    """Without CAP_NET_RAW, ping uses the unprivileged ICMP socket when the namespace's
    ping_group_range allows it, and otherwise says which sysctl to set."""
    a, b = lab.hosts["a"], lab.hosts["b"]
    assert a.daemon and b.daemon
    lab.wait_reachable(a, b.daemon.address)  # the session exists: no probe is lost to set-up
    sysctl = "net.ipv4.ping_group_range"
    before = a.run("sysctl", "-n", sysctl).stdout.split()

    def run() -> str:
        return a.run(
            "setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw",
            sys.executable, "-c", PING_SCRIPT, str(tmp_path), a.daemon.admin,
            str(b.daemon.address),
            timeout=60,
        ).stdout  # fmt: skip

    try:
        a.run("sysctl", "-w", f"{sysctl}=1 0")
        assert "ping_group_range" in run()
        a.run("sysctl", "-w", f"{sysctl}=0 2147483647")
        assert "RTTS 2" in run()
    finally:
        a.run("sysctl", "-w", f"{sysctl}={before[0]} {before[1]}")
