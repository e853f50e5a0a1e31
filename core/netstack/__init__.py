"""Userspace TCP and UDP over IPv6, packet in / packet out.

The public surface: :class:`NetStack` (feed it IPv6 packets, give it a function that
sends them; it offers asyncio-shaped ``create_connection``, ``create_server``,
``create_datagram_endpoint``, ``open_connection`` and ``start_server``), the sans-IO
TCP connection and its configuration, and :class:`TunDevice` for running the stack on
a Linux TUN interface.  See docs/netstack.md.
"""

from __future__ import annotations

from core.netstack.aio import DatagramTransport, Server, TcpTransport
from core.netstack.stack import DEFAULT_MTU, NetStack, StackStats
from core.netstack.tcp import LocalProtocolError, TcpConfig, TcpConnection, TcpState
from core.netstack.tun import TunDevice

__all__ = [
    "DEFAULT_MTU",
    "DatagramTransport",
    "LocalProtocolError",
    "NetStack",
    "Server",
    "StackStats",
    "TcpConfig",
    "TcpConnection",
    "TcpState",
    "TcpTransport",
    "TunDevice",
]
