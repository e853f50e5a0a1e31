"""The pure parts of the yggdrasil backend: the managed daemon's config (from real
``-genconf -json`` templates of 0.5.12 and 0.4.7), interface addresses, ICMPv6 echo."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path

import pytest

from core.backends.yggdrasil.daemonconf import (
    DaemonSettings,
    build_daemon_config,
    parse_genconf,
)
from core.backends.yggdrasil.netns import parse_if_inet6
from core.backends.yggdrasil.ping import (
    ICMP6_ECHO_REPLY,
    echo_request,
    parse_echo_reply,
)
from core.errors import MeshError
from core.identity import Identity, parse_yggdrasil_key
from tests.conftest import require

DATA = Path(__file__).parent / "data"
ME = Identity.from_seed(bytes(range(32)))
SETTINGS = DaemonSettings(
    listen=("tls://[::]:12345",),
    peers=("tls://[fd00::1]:1",),
    multicast_interfaces=("eth.*", "wlan0"),
    admin_listen="unix:///d/yggdrasil/admin.sock",
    if_name="ygg0",
)


def template(version: str) -> dict[str, object]:
    return parse_genconf((DATA / f"genconf_{version}.json").read_bytes(), "yggdrasil")


def test_0_5_config_with_the_key_file() -> None:
    key_path = Path("/d/node.key")
    config = build_daemon_config(template("v05"), ME, _with_key_path(key_path))
    assert config["PrivateKeyPath"] == "/d/node.key" and "PrivateKey" not in config
    assert config["Listen"] == ["tls://[::]:12345"] and config["Peers"] == ["tls://[fd00::1]:1"]
    assert config["AdminListen"] == "unix:///d/yggdrasil/admin.sock"
    assert config["IfName"] == "ygg0" and config["InterfacePeers"] == {}
    shapes = config["MulticastInterfaces"]
    assert shapes == [
        {"Regex": "eth.*", "Beacon": True, "Listen": True, "Password": ""},
        {"Regex": "wlan0", "Beacon": True, "Listen": True, "Password": ""},
    ]
    assert set(config) - set(template("v05")) == {"PrivateKeyPath", "AdminListen"}


def _with_key_path(path: Path) -> DaemonSettings:
    return DaemonSettings(
        listen=SETTINGS.listen,
        peers=SETTINGS.peers,
        multicast_interfaces=SETTINGS.multicast_interfaces,
        admin_listen=SETTINGS.admin_listen,
        if_name=SETTINGS.if_name,
        key_path=path,
    )


def test_0_5_config_without_a_key_file_carries_the_key() -> None:
    config = build_daemon_config(template("v05"), ME, SETTINGS)
    assert config["PrivateKey"] == ME.to_yggdrasil_hex()
    assert parse_yggdrasil_key(json.dumps(config).encode(), "x").public_key == ME.public_key


def test_0_4_config_has_both_halves_and_its_own_multicast_shape() -> None:
    config = build_daemon_config(template("v04"), ME, _with_key_path(Path("/d/node.key")))
    assert config["PrivateKey"] == ME.to_yggdrasil_hex()  # 0.4 has no PrivateKeyPath
    assert config["PublicKey"] == ME.public_key.hex()
    assert "PrivateKeyPath" not in config
    assert config["MulticastInterfaces"][0] == {  # type: ignore[index]
        "Regex": "eth.*", "Beacon": True, "Listen": True, "Port": 0, "Priority": 0,
    }  # fmt: skip
    assert set(config) == set(template("v04"))


def test_no_multicast_means_an_empty_list() -> None:
    settings = DaemonSettings((), (), (), "unix:///a.sock", "none")
    assert build_daemon_config(template("v05"), ME, settings)["MulticastInterfaces"] == []


@pytest.mark.parametrize("version", ["v05", "v04"])
def test_the_real_daemon_accepts_the_config(version: str, tmp_path: Path) -> None:
    """`yggdrasil -useconffile X -publickey` parses what we write and finds our key."""
    binary = {
        "v05": "/usr/sbin/yggdrasil",
        "v04": "/opt/meshsuite/yggdrasil-0.4.7/usr/sbin/yggdrasil",
    }[version]
    require(os.path.exists(binary), f"needs the yggdrasil daemon at {binary}")
    path = tmp_path / "y.conf"
    path.write_text(json.dumps(build_daemon_config(template(version), ME, SETTINGS)))
    out = subprocess.run([binary, "-useconffile", str(path), "-address"], capture_output=True)
    assert out.stdout.decode().strip() == str(ME.address)


def test_genconf_that_is_not_json() -> None:
    with pytest.raises(MeshError, match="did not print JSON"):
        parse_genconf(b"Usage of yggdrasil", "/bin/false")


def test_if_inet6_lines() -> None:
    text = (
        "00000000000000000000000000000001 01 80 10 80       lo\n"
        "0204f7b9cff792e114a23963d257d2d2 03 07 00 80   lb-tun\n"
        "fd6c6200000000010000000000000001 06 40 00 c0 lb-two-ab\n"
        "fd6c6200000000010000000000000009 06 40 00 c0\n"  # malformed: skipped
    )
    entries = parse_if_inet6(text)
    assert [e.ifname for e in entries] == ["lo", "lb-tun", "lb-two-ab"]
    tun = entries[1]
    assert tun.address == ipaddress.IPv6Address("204:f7b9:cff7:92e1:14a2:3963:d257:d2d2")
    assert tun.ifindex == 3 and tun.prefix_len == 7 and tun.usable
    assert not parse_if_inet6("fe800000000000000000000000000001 02 40 20 c0 eth0")[0].usable


def test_echo_request_and_reply() -> None:
    packet = echo_request(0x1234, 7, b"payload")
    assert packet[:1] == bytes([128]) and packet[4:8] == b"\x12\x34\x00\x07"
    reply = bytes([ICMP6_ECHO_REPLY]) + packet[1:]
    parsed = parse_echo_reply(reply)
    assert parsed is not None
    assert (parsed.identifier, parsed.sequence, parsed.payload) == (0x1234, 7, b"payload")
    assert parse_echo_reply(packet) is None  # a request is not a reply
    assert parse_echo_reply(bytes([1, 4, 0, 0, 0, 0, 0, 0])) is None  # unreachable
    assert parse_echo_reply(b"\x81") is None


def test_public_surface() -> None:
    import core.backends.yggdrasil as ygg
    from core.backend import Backend
    from core.config import NodeConfig

    assert sorted(ygg.__all__) == sorted(
        [
            "AdminClient",
            "AdminCommandError",
            "AdminProtocolError",
            "DaemonUnreachableError",
            "SelfInfo",
            "SessionInfo",
            "TunInfo",
            "YggdrasilBackend",
            "probe_daemon",
        ]
    )
    assert all(hasattr(ygg, name) for name in ygg.__all__)
    members = [n for n in dir(Backend) if not n.startswith("_")] + ["name"]
    assert all(hasattr(ygg.YggdrasilBackend, n) for n in members)
    backend = ygg.YggdrasilBackend(NodeConfig(data_dir=Path("/nonexistent")), None)
    with pytest.raises(MeshError, match="not started"):
        _ = backend.address
    assert not hasattr(backend, "public_key")  # before start: unknown, not an error


def test_bad_options_are_usage_errors() -> None:
    from core.backends.yggdrasil import YggdrasilBackend
    from core.config import NodeConfig
    from core.errors import UsageError

    config = NodeConfig(data_dir=Path("/x"), services={"yggdrasil": {"poll_interval": "fast"}})
    with pytest.raises(UsageError, match="poll_interval must be a positive number"):
        YggdrasilBackend(config, None)
    config = NodeConfig(data_dir=Path("/x"), services={"yggdrasil": {"netns": "lb-nope"}})
    with pytest.raises(MeshError, match="network namespace /var/run/netns/lb-nope does not"):
        YggdrasilBackend(config, None)


async def test_kernel_udp_is_handed_out_as_a_datagram_transport() -> None:
    import asyncio
    import socket

    from core.backends.yggdrasil.udp import DatagramAdapter

    got: asyncio.Queue[bytes] = asyncio.Queue()

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.DatagramTransport)
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[object, ...]) -> None:
            got.put_nowait(data)
            self.transport.sendto(data.upper(), addr)

    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.bind(("::1", 0))
    _, adapter = await loop.create_datagram_endpoint(lambda: DatagramAdapter(Echo()), sock=sock)
    assert isinstance(adapter, DatagramAdapter) and adapter.transport is not None
    server = adapter.transport
    client = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        client.setblocking(False)
        await loop.sock_sendto(client, b"hi", server.get_extra_info("sockname")[:2])
        assert await asyncio.wait_for(got.get(), 5) == b"hi"
        assert await asyncio.wait_for(loop.sock_recv(client, 10), 5) == b"HI"
        assert server.get_write_buffer_size() == 0 and not server.is_closing()
    finally:
        client.close()
        server.close()
    assert server.is_closing()
