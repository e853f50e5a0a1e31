"""The embedded node's userspace TCP/UDP against the Linux kernel on a daemon host.

Lab: host ``a`` is a network namespace running a real yggdrasil 0.5.12 daemon with a
TUN; a veth joins it to this (root) namespace, where an embedded node runs in-process
and peers with the daemon. Kernel sockets are made inside ``a``.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import shutil
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.backends.embedded import EmbeddedBackend
from core.config import NodeConfig
from core.forwarding import Expose, ForwardingConfig, ForwardingService
from core.identity import Identity
from core.node import Node
from tests.conftest import require
from tests.lab.fixtures import require_lab
from tests.lab.lab import Daemon, Host, Lab

pytestmark = pytest.mark.lab

LINK_PORT = 7001


@dataclass
class KLab:
    lab: Lab
    host: Host  # a: the daemon the embedded node peers with
    daemon: Daemon
    far: Host  # b: a daemon host peered only with a
    far_daemon: Daemon
    link_addr: str  # a's end of the veth to this process


@pytest.fixture(scope="module")
def klab() -> Iterator[KLab]:
    require_lab()
    with Lab("ek") as lab:
        a = lab.host("a")
        root = a.link_root(0xEE)
        b = lab.host("b")
        lab.link(a, b)
        daemon = a.start_daemon(
            listen=[f"tcp://[{root.host_addr}]:{LINK_PORT}", a.listen_uri(b, LINK_PORT + 1)]
        )
        far = b.start_daemon(peers=[a.peer_uri(b, LINK_PORT + 1)])
        lab.wait_peered(daemon, far)
        try:
            yield KLab(lab, a, daemon, b, far, root.host_addr)
        finally:
            root.close()


@pytest.fixture
async def node(klab: KLab, tmp_path: Path) -> AsyncIterator[Node]:
    config = NodeConfig(
        data_dir=tmp_path, backend="embedded", peers=(f"tcp://[{klab.link_addr}]:{LINK_PORT}",)
    )
    n = await Node.open(config, Identity.generate())
    try:
        for _ in range(100):
            if any(p.up for p in await n.peers()):
                break
            await asyncio.sleep(0.1)
        for _ in range(30):  # until a round trip proves the paths both ways
            if (await n.ping(klab.daemon.address, count=1, timeout=1))[0] is not None:
                break
        yield n
    finally:
        await n.close()


def _kernel_listener(host: Host, addr: str, kind: int = socket.SOCK_STREAM) -> socket.socket:
    s = host.socket(socket.AF_INET6, kind)
    s.bind((addr, 0))
    if kind == socket.SOCK_STREAM:
        s.listen(16)
    s.setblocking(False)
    return s


def _kernel_client(host: Host, kind: int = socket.SOCK_STREAM) -> socket.socket:
    s = host.socket(socket.AF_INET6, kind)
    s.setblocking(False)
    return s


Hook = Callable[[bytes, Callable[[bytes], None]], None]


def lossy(rate: float, reorder: float, seed: int) -> Hook:
    """Drop ``rate`` of packets and hold back ``reorder`` of them behind the next one."""
    rng = random.Random(seed)
    held: list[bytes] = []

    def hook(packet: bytes, forward: Callable[[bytes], None]) -> None:
        if rng.random() < rate:
            return
        if rng.random() < reorder and not held:
            held.append(packet)
            asyncio.get_running_loop().call_later(0.02, lambda: held and forward(held.pop()))
            return
        forward(packet)
        if held:
            forward(held.pop())

    return hook


async def test_embedded_client_to_kernel_server_echo_and_close(klab: KLab, node: Node) -> None:
    listener = _kernel_listener(klab.host, str(klab.daemon.address))
    port = listener.getsockname()[1]
    peers: list[str] = []

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        peers.append(w.get_extra_info("peername")[0])
        w.write(await r.read())  # until our FIN
        await w.drain()
        w.close()

    server = await asyncio.start_server(serve, sock=listener)
    try:
        reader, writer = await node.open_connection(klab.daemon.address, port)
        assert writer.get_extra_info("peer_key") == bytes.fromhex(klab.daemon.key)
        writer.write(b"over userspace TCP")
        writer.write_eof()  # half-close: the kernel still answers
        assert await asyncio.wait_for(reader.read(), 20) == b"over userspace TCP"
        writer.close()
        assert peers == [str(node.address)]
    finally:
        server.close()
        await server.wait_closed()


async def test_kernel_client_to_embedded_server(klab: KLab, node: Node) -> None:
    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        key = w.get_extra_info("peer_key")
        w.write(b"hello " + (key.hex().encode() if key else b"?"))
        await w.drain()
        w.close()

    await node.start_server(serve, 8100)
    sock = _kernel_client(klab.host)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(sock=await _connected(sock, str(node.address), 8100)), 20
    )
    assert await asyncio.wait_for(reader.read(), 20) == b"hello " + klab.daemon.key.encode()
    writer.close()


async def _connected(sock: socket.socket, addr: str, port: int) -> socket.socket:
    """``sock`` connected to ``[addr]:port``; closed (never leaked) when that fails."""
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (addr, port)), 20)
    except BaseException:
        sock.close()
        raise
    return sock


async def test_closed_ports_are_refused_both_ways(klab: KLab, node: Node) -> None:
    with pytest.raises(ConnectionRefusedError):
        await node.open_connection(klab.daemon.address, 1, timeout=20)
    sock = _kernel_client(klab.host)
    with pytest.raises(ConnectionRefusedError):
        await _connected(sock, str(node.address), 9)
    sock.close()


@pytest.mark.parametrize("direction", ["to_kernel", "from_kernel"])
async def test_bulk_transfer_survives_loss_and_reordering(
    klab: KLab, node: Node, direction: str
) -> None:
    backend = node.backend
    assert isinstance(backend, EmbeddedBackend)
    payload = random.Random(7).randbytes(2 * 1024 * 1024)
    digest = hashlib.sha256(payload).hexdigest()
    received: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def sink(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        data = await r.read(-1)
        received.set_result(hashlib.sha256(data).hexdigest())
        w.close()

    backend.set_packet_hooks(lossy(0.03, 0.05, 1), lossy(0.03, 0.05, 2))
    try:
        if direction == "to_kernel":
            listener = _kernel_listener(klab.host, str(klab.daemon.address))
            server = await asyncio.start_server(sink, sock=listener)
            _, writer = await node.open_connection(klab.daemon.address, listener.getsockname()[1])
        else:
            await node.start_server(sink, 8200)
            server = None
            sock = await _connected(_kernel_client(klab.host), str(node.address), 8200)
            _, writer = await asyncio.open_connection(sock=sock)
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        assert await asyncio.wait_for(received, 120) == digest
        writer.close()
        if server is not None:
            server.close()
            await server.wait_closed()
    finally:
        backend.set_packet_hooks(None, None)


async def test_udp_both_ways(klab: KLab, node: Node) -> None:
    got: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    class Proto(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
            got.put_nowait((data, addr))

    transport, _ = await node.create_datagram_endpoint(Proto, local_port=5300)
    kernel = _kernel_listener(klab.host, str(klab.daemon.address), socket.SOCK_DGRAM)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendto(kernel, b"from kernel", (str(node.address), 5300))
        data, addr = await asyncio.wait_for(got.get(), 20)
        assert data == b"from kernel" and addr[0] == str(klab.daemon.address)
        transport.sendto(b"from embedded", (str(klab.daemon.address), kernel.getsockname()[1]))
        data2, addr2 = await asyncio.wait_for(loop.sock_recvfrom(kernel, 100), 20)
        assert data2 == b"from embedded" and addr2[0] == str(node.address)
    finally:
        transport.close()
        kernel.close()


async def test_socks5_curl_reaches_http_server_on_daemon_host(
    klab: KLab, node: Node, tmp_path: Path
) -> None:
    require(shutil.which("curl") is not None, "curl is not installed")
    (tmp_path / "page.txt").write_text("served by the daemon host's kernel\n")
    web = klab.host.spawn(
        "-m", "http.server", "8080", "--bind", str(klab.daemon.address), "-d", str(tmp_path)
    )
    fwd = ForwardingService(node, ForwardingConfig(socks=("127.0.0.1", 0)), tmp_path)
    await fwd.start()
    try:
        socks = fwd.endpoints()["socks5"]
        token = (tmp_path / "socks.token").read_text().strip()
        url = f"http://{klab.daemon.key}.mesh:8080/page.txt"
        out = b""
        for _ in range(20):
            proc = await asyncio.create_subprocess_exec(
                "curl", "-s", "--max-time", "10", "--socks5-hostname", socks["listen"],
                "--proxy-user", f"mesh:{token}", url, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, _ = await proc.communicate()
            if proc.returncode == 0 and out:
                break
            await asyncio.sleep(0.3)
        assert out == b"served by the daemon host's kernel\n"
    finally:
        await fwd.close()
        web.kill()
        web.wait()
        for pipe in (web.stdin, web.stdout, web.stderr):
            if pipe is not None:
                pipe.close()


async def test_exposed_local_port_is_reached_from_daemon_host(
    klab: KLab, node: Node, tmp_path: Path
) -> None:
    async def local(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"local service: " + await r.readline())
        await w.drain()
        w.close()

    local_server = await asyncio.start_server(local, "127.0.0.1", 0)
    local_port = local_server.sockets[0].getsockname()[1]
    fwd = ForwardingService(node, ForwardingConfig(expose=(Expose(local_port, 2222),)), tmp_path)
    await fwd.start()
    try:
        sock = await _connected(_kernel_client(klab.host), str(node.address), 2222)
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(b"ssh-ish\n")
        assert await asyncio.wait_for(reader.read(), 20) == b"local service: ssh-ish\n"
        writer.close()
    finally:
        await fwd.close()
        local_server.close()
        await local_server.wait_closed()


async def test_hidden_embedded_host_is_reached_through_a_daemon_chain(
    klab: KLab, node: Node
) -> None:
    # The embedded node listens nowhere and only dials a; b is peered only with a.
    # b's kernel still reaches a service on the embedded node's mesh address (0-OS case).
    assert (await node.status())["backend_status"]["listening"] == []

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"hidden host answers " + w.get_extra_info("peername")[0].encode())
        await w.drain()
        w.close()

    await node.start_server(serve, 8300)
    data = b""
    for _ in range(30):  # b's daemon must first look up the embedded node's path
        try:
            sock = await _connected(_kernel_client(klab.far), str(node.address), 8300)
        except (TimeoutError, OSError):
            continue
        reader, writer = await asyncio.open_connection(sock=sock)
        data = await asyncio.wait_for(reader.read(), 20)
        writer.close()
        break
    assert data == b"hidden host answers " + str(klab.far_daemon.address).encode()


async def test_daemon_restart_mid_test_and_the_embedded_node_recovers(
    klab: KLab, node: Node
) -> None:
    async with node.events.subscribe() as events:
        await asyncio.to_thread(klab.daemon.stop)
        await asyncio.to_thread(klab.daemon.start)
        kinds: list[str] = []
        async with asyncio.timeout(60):
            async for event in events:
                kinds.append(event.kind)
                if "peer.down" in kinds and event.kind == "peer.up":
                    break
    for _ in range(60):
        if (await node.ping(klab.daemon.address, count=1, timeout=1))[0] is not None:
            break
    else:
        raise AssertionError("no ping replies after the daemon restarted")
    listener = _kernel_listener(klab.host, str(klab.daemon.address))
    server = await asyncio.start_server(lambda r, w: (w.write(b"back"), w.close()), sock=listener)
    try:
        reader, writer = await node.open_connection(klab.daemon.address, listener.getsockname()[1])
        assert await asyncio.wait_for(reader.read(), 20) == b"back"
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
