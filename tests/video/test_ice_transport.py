"""The mesh ICE transport: one candidate on the mesh address, only the peer talked to,
no OS UDP socket on the embedded backend."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from pathlib import Path

import aioice
import pytest
from aioice import Candidate
from aiortc import RTCConfiguration, RTCPeerConnection

from apps.video.ice import (
    MeshIceConnection,
    check_internals,
    install_mesh_ice,
    mesh_connections,
)
from tests.video.mesh import CallMesh, exchange_and_connect
from tests.video.oswatch import udp_socket_inodes

pytestmark = pytest.mark.timeout(60)


def test_aiortc_and_aioice_internals_are_the_pinned_ones() -> None:
    check_internals()  # raises InternalsMoved, naming what moved, on an unpinned upgrade


async def test_two_embedded_nodes_connect_ice_without_an_os_udp_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with CallMesh(tmp_path) as mesh:
        a, b = await mesh.open(2)
        before = udp_socket_inodes()
        loop = asyncio.get_running_loop()
        opened: list[object] = []
        real_endpoint = loop.create_datagram_endpoint

        async def watched(*args: object, **kwargs: object) -> object:
            opened.append((args, kwargs))
            return await real_endpoint(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(loop, "create_datagram_endpoint", watched)
        real_socket = socket.socket

        class WatchedSocket(real_socket):  # type: ignore[misc,valid-type]
            def __init__(self, family: int = -1, type: int = -1, *rest: object) -> None:
                if type != -1 and type & socket.SOCK_DGRAM:
                    opened.append(("socket", family, type))
                super().__init__(family, type, *rest)  # type: ignore[arg-type]

        monkeypatch.setattr(socket, "socket", WatchedSocket)

        ca = MeshIceConnection(a, b.address, ice_controlling=True)
        cb = MeshIceConnection(b, a.address, ice_controlling=False)
        await asyncio.gather(ca.gather_candidates(), cb.gather_candidates())
        assert [c.host for c in ca.local_candidates] == [str(a.address)]
        assert [c.host for c in cb.local_candidates] == [str(b.address)]
        await exchange_and_connect(ca, cb)
        await ca.send(b"over the mesh")
        assert await asyncio.wait_for(cb.recv(), 5) == b"over the mesh"
        during = udp_socket_inodes()
        await asyncio.gather(ca.close(), cb.close())
        assert opened == []
        assert during <= before, "the call opened an OS UDP socket"


async def test_remote_candidates_off_the_peer_address_are_dropped(tmp_path: Path) -> None:
    async with CallMesh(tmp_path) as mesh:
        a, b = await mesh.open(2)
        conn = MeshIceConnection(a, b.address, ice_controlling=True)
        await conn.gather_candidates()
        forged = [
            Candidate("1", 1, "udp", 1, "127.0.0.1", 9, "host"),
            Candidate("2", 1, "udp", 1, "fd00::1", 9, "host"),
            Candidate("3", 1, "udp", 1, "f00d-face.local", 9, "host"),
            Candidate("4", 1, "udp", 1, str(a.address), 9, "host"),
        ]
        for cand in forged:
            await conn.add_remote_candidate(cand)
        good = Candidate("5", 1, "udp", 1, str(b.address), 9, "host")
        await conn.add_remote_candidate(good)
        assert [c.host for c in conn.remote_candidates] == [str(b.address)]
        assert len(conn.counters.dropped_candidates) == 4
        assert not conn.allowed(("127.0.0.1", 9))
        assert conn.counters.refused_sends == 1
        await conn.close()


async def test_installing_mesh_ice_touches_only_the_peer_connection_it_is_given() -> None:
    mine = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    other = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for pc in (mine, other):
        pc.addTransceiver("audio")
    peer = ipaddress.IPv6Address("200::1")
    installed = install_mesh_ice(mine, node=object(), peer=peer)  # type: ignore[arg-type]
    assert mesh_connections(mine) == installed and len(installed) == 1
    later = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    later.addTransceiver("video")
    for pc in (other, later):
        conn = pc.getTransceivers()[0].receiver.transport.transport._connection
        assert type(conn) is aioice.Connection
        with pytest.raises(RuntimeError, match="not on the mesh"):
            mesh_connections(pc)
    for pc in (mine, other, later):
        await pc.close()
