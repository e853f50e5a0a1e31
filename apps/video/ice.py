"""ICE over the mesh: one host candidate per component on the node's mesh address.

aioice gathers candidates by opening OS UDP sockets on every interface and offers no
hook to choose them. :class:`MeshIceConnection` is an ``aioice.Connection`` whose
gathering instead makes exactly one host candidate per component through the node's
datagram API (``node.create_datagram_endpoint``): under the daemon backend that socket
is bound to the TUN address (the daemon's netns and the non-mesh guard apply), under the
embedded backend it is the embedded node's userspace UDP and no OS socket exists.

It talks only to the signaling peer's authenticated mesh address: remote candidates
elsewhere (``.local`` mDNS names included) are dropped before aioice sees them, STUN
checks and media from any other source are ignored, and the send path refuses any
other destination.

The seam: ``RTCIceGatherer`` builds its ``aioice.Connection`` in its constructor, so
:func:`install_mesh_ice` replaces that object (on the gatherer and its transport)
before anything was gathered or added. It touches only the peer connection it is given;
no module attribute of aiortc or aioice is changed. The internals relied on are pinned
(``aiortc==1.16.0``, ``aioice==0.13.0``) and checked by :func:`check_internals`
(``tests/video/test_ice_internals.py`` fails loudly if they move).
"""

from __future__ import annotations

import inspect
import ipaddress
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import aioice
import aioice.ice
from aioice import Candidate
from aioice.candidate import candidate_foundation, candidate_priority

if TYPE_CHECKING:
    from core import Node

__all__ = [
    "IceCounters",
    "InternalsMoved",
    "MeshIceConnection",
    "check_internals",
    "install_mesh_ice",
    "mesh_connections",
]

log = logging.getLogger(__name__)


class InternalsMoved(RuntimeError):
    """aiortc/aioice no longer have the internals this module replaces."""


@dataclass
class IceCounters:
    """What the mesh ICE refused, for stats and tests."""

    dropped_candidates: list[str] = field(default_factory=list)
    ignored_packets: int = 0
    refused_sends: int = 0
    heard: int = 0  # datagrams from the peer (media, RTCP, STUN): the call's pulse


def _canonical(host: str) -> str | None:
    try:
        return str(ipaddress.IPv6Address(host.split("%", 1)[0]))
    except ValueError:
        return None


class _MeshStunProtocol(aioice.ice.StunProtocol):
    """aioice's STUN protocol, deaf to every source but the peer's mesh address."""

    def __init__(self, receiver: MeshIceConnection) -> None:
        super().__init__(receiver)
        self._mesh = receiver

    def datagram_received(self, data: bytes | str, addr: tuple[Any, ...]) -> None:
        host = _canonical(str(addr[0]))
        if host != self._mesh.peer_host:
            self._mesh.counters.ignored_packets += 1
            log.debug("ignored a datagram from %s (not the call peer)", addr[0])
            return
        self._mesh.counters.heard += 1
        super().datagram_received(data, (host, addr[1]))

    async def send_data(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._mesh.allowed(addr):
            await super().send_data(data, addr)

    def send_stun(self, message: aioice.stun.Message, addr: tuple[str, int]) -> None:
        if self._mesh.allowed(addr):
            super().send_stun(message, addr)


class MeshIceConnection(aioice.Connection):
    """An ``aioice.Connection`` that gathers on the node's mesh address only and talks
    only to ``peer`` (the signaling peer's authenticated mesh address)."""

    def __init__(self, node: Node, peer: ipaddress.IPv6Address, **kwargs: Any) -> None:
        kwargs.update(stun_server=None, turn_server=None, use_ipv4=False, use_ipv6=True)
        super().__init__(**kwargs)
        self.node = node
        self.peer_host = str(ipaddress.IPv6Address(peer))
        self.counters = IceCounters()

    def allowed(self, addr: tuple[Any, ...]) -> bool:
        if _canonical(str(addr[0])) == self.peer_host:
            return True
        self.counters.refused_sends += 1
        log.warning("refused to send to %s: not the call peer", addr[0])
        return False

    async def gather_candidates(self) -> None:
        if self._local_candidates_start:
            return
        self._local_candidates_start = True
        host = str(self.node.address)
        for component in sorted(self._components):
            transport, protocol = await self.node.create_datagram_endpoint(
                lambda: _MeshStunProtocol(self)
            )
            stun = cast(_MeshStunProtocol, protocol)
            port = int(transport.get_extra_info("sockname")[1])
            stun.local_candidate = Candidate(
                foundation=candidate_foundation("host", "udp", host),
                component=component,
                transport="udp",
                priority=candidate_priority(component, "host"),
                host=host,
                port=port,
                type="host",
            )
            self._protocols.append(stun)
            self._local_candidates.append(stun.local_candidate)
        self._local_candidates_end = True

    async def add_remote_candidate(self, remote_candidate: Candidate | None) -> None:
        if remote_candidate is not None and _canonical(remote_candidate.host) != self.peer_host:
            self.counters.dropped_candidates.append(
                f"{remote_candidate.host} {remote_candidate.port}"
            )
            log.info("dropped remote candidate %s: not the call peer", remote_candidate.host)
            return
        await super().add_remote_candidate(remote_candidate)


def install_mesh_ice(pc: Any, node: Node, peer: ipaddress.IPv6Address) -> list[MeshIceConnection]:
    """Give every ICE transport of ``pc`` a :class:`MeshIceConnection`.

    Call it after the transceivers exist and before ``setLocalDescription`` /
    ``setRemoteDescription`` (nothing gathered or added yet). Returns the connections.
    """
    installed: list[MeshIceConnection] = []
    for transceiver in pc.getTransceivers():
        ice = transceiver.receiver.transport.transport
        gatherer = ice.iceGatherer
        old = gatherer._connection
        if isinstance(old, MeshIceConnection):
            if old not in installed:
                installed.append(old)
            continue
        if gatherer.state != "new" or old.local_candidates or old.remote_candidates:
            raise RuntimeError("install_mesh_ice: the ICE transport has already started")
        new = MeshIceConnection(
            node,
            peer,
            ice_controlling=old.ice_controlling,
            components=len(old._components),
            local_username=old.local_username,
            local_password=old.local_password,
        )
        gatherer._connection = new
        ice._connection = new
        ice._recv = new.recv
        ice._send = new.send
        installed.append(new)
    return installed


def mesh_connections(pc: Any) -> list[MeshIceConnection]:
    """The ICE connections of ``pc``; raises if any is not a mesh one (it would open OS
    sockets on every interface)."""
    found: list[MeshIceConnection] = []
    for transceiver in pc.getTransceivers():
        conn = transceiver.receiver.transport.transport._connection
        if not isinstance(conn, MeshIceConnection):
            raise RuntimeError("a transport of this call is not on the mesh")
        if conn not in found:
            found.append(conn)
    return found


_EXPECTED_ATTRIBUTES = (
    "_local_candidates_start",
    "_local_candidates",
    "_local_candidates_end",
    "_protocols",
    "_components",
)


def check_internals() -> None:
    """Raise :class:`InternalsMoved` unless aiortc/aioice still look as this module
    expects (the pinned aiortc 1.16.0 / aioice 0.13.0)."""
    import aiortc
    from aiortc.rtcicetransport import RTCIceGatherer, RTCIceTransport

    problems: list[str] = []
    if aiortc.__version__ != "1.16.0":
        problems.append(f"aiortc is {aiortc.__version__}, expected 1.16.0")
    if aioice.__version__ != "0.13.0":
        problems.append(f"aioice is {aioice.__version__}, expected 0.13.0")
    probe = aioice.Connection(ice_controlling=False)
    for name in _EXPECTED_ATTRIBUTES:
        if not hasattr(probe, name):
            problems.append(f"aioice.Connection has no {name}")
    for name, params in (
        ("gather_candidates", ["self"]),
        ("add_remote_candidate", ["self", "remote_candidate"]),
    ):
        got = list(inspect.signature(getattr(aioice.Connection, name)).parameters)
        if got != params:
            problems.append(f"aioice.Connection.{name}{tuple(got)} changed")
    stun_params = list(inspect.signature(aioice.ice.StunProtocol.__init__).parameters)
    if stun_params != ["self", "receiver"]:
        problems.append(f"aioice.ice.StunProtocol.__init__{tuple(stun_params)} changed")
    for name in ("datagram_received", "send_data", "send_stun"):
        if not hasattr(aioice.ice.StunProtocol, name):
            problems.append(f"aioice.ice.StunProtocol has no {name}")
    gatherer = RTCIceGatherer(iceServers=[])
    if not isinstance(getattr(gatherer, "_connection", None), aioice.Connection):
        problems.append("RTCIceGatherer no longer keeps its aioice.Connection in _connection")
    transport = RTCIceTransport(gatherer)
    for name in ("_connection", "_recv", "_send"):
        if not hasattr(transport, name):
            problems.append(f"RTCIceTransport has no {name}")
    if problems:
        raise InternalsMoved(
            "apps/video/ice.py relies on aiortc/aioice internals that moved: "
            + "; ".join(problems)
            + ". Re-check MeshIceConnection against the new sources before unpinning."
        )
