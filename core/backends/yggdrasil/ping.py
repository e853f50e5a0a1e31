"""ICMPv6 echo (RFC 4443 §4.1/4.2) over the daemon's TUN.

Sans-IO part: :func:`echo_request` builds a packet, :func:`parse_echo_reply` reads one.
The checksum is left zero: for ICMPv6 sockets the kernel always computes it (RFC 3542
§3.1), both for the unprivileged "ping" datagram socket and for raw sockets.

The adapter :func:`ping` prefers the unprivileged datagram socket (allowed when the
caller's group is inside ``net.ipv4.ping_group_range``, which also governs IPv6) and
falls back to a raw socket, which needs root or CAP_NET_RAW.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from core.errors import MeshError
from core.tasks import within

__all__ = [
    "ICMP6_ECHO_REPLY",
    "ICMP6_ECHO_REQUEST",
    "EchoReply",
    "echo_request",
    "parse_echo_reply",
    "ping",
]

log = logging.getLogger(__name__)

ICMP6_ECHO_REQUEST = 128
ICMP6_ECHO_REPLY = 129
_HEADER = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence
_MAGIC = b"meshping"

SocketMaker = Callable[[int, int, int], socket.socket]


@dataclass(frozen=True, slots=True)
class EchoReply:
    identifier: int
    sequence: int
    payload: bytes


def echo_request(identifier: int, sequence: int, payload: bytes) -> bytes:
    return _HEADER.pack(ICMP6_ECHO_REQUEST, 0, 0, identifier & 0xFFFF, sequence & 0xFFFF) + payload


def parse_echo_reply(packet: bytes) -> EchoReply | None:
    """The echo reply in ``packet``, or None for any other ICMPv6 message."""
    if len(packet) < _HEADER.size:
        return None
    kind, code, _sum, ident, seq = _HEADER.unpack_from(packet)
    if kind != ICMP6_ECHO_REPLY or code != 0:
        return None
    return EchoReply(ident, seq, bytes(packet[_HEADER.size :]))


def _open_socket(make: SocketMaker) -> tuple[socket.socket, bool]:
    """(socket, kernel_filters_ident): the ping datagram socket, else a raw one."""
    try:
        return make(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6), True
    except PermissionError:
        pass
    try:
        return make(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6), False
    except PermissionError:
        raise MeshError(
            "ping needs an ICMPv6 socket: allow unprivileged ping with "
            "`sysctl net.ipv4.ping_group_range='0 2147483647'`, or run as root "
            "(or with CAP_NET_RAW)"
        ) from None


async def ping(
    make_socket: SocketMaker,
    source: ipaddress.IPv6Address,
    target: ipaddress.IPv6Address,
    *,
    count: int,
    interval: float,
    timeout: float,
    device: str | None = None,
) -> list[float | None]:
    """Round-trip times in seconds, None for each probe unanswered within ``timeout``."""
    loop = asyncio.get_running_loop()
    sock, dgram = _open_socket(make_socket)
    results: list[float | None] = [None] * count
    sent_at: dict[int, float] = {}
    token = _MAGIC + os.urandom(8)
    ident = int.from_bytes(os.urandom(2), "big")
    done = asyncio.Event()
    with sock:
        sock.setblocking(False)
        if device:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        try:
            sock.bind((str(source), 0))
        except OSError as exc:
            raise MeshError(f"ping: cannot use source {source}: {exc}") from None
        if dgram:
            ident = sock.getsockname()[1]  # the kernel rewrites the identifier to the port

        def on_readable() -> None:
            while True:
                try:
                    data, addr = sock.recvfrom(65536)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    log.debug("ping: receive error %s", exc)
                    return
                reply = parse_echo_reply(data)
                if (
                    reply is None
                    or reply.identifier != ident
                    or not reply.payload.startswith(token)
                ):
                    continue
                if ipaddress.IPv6Address(str(addr[0]).split("%", 1)[0]) != target:
                    continue
                seq = reply.sequence
                if seq in sent_at and seq < count and results[seq] is None:
                    results[seq] = time.monotonic() - sent_at[seq]
                    if all(r is not None for r in results):
                        done.set()

        loop.add_reader(sock.fileno(), on_readable)
        try:
            for seq in range(count):
                if seq:
                    await asyncio.sleep(interval)
                packet = echo_request(ident, seq, token + seq.to_bytes(2, "big"))
                sent_at[seq] = time.monotonic()
                try:
                    await loop.sock_sendto(sock, packet, (str(target), 0))
                except OSError as exc:
                    log.info("ping %s seq %d: %s", target, seq, exc)
            with contextlib.suppress(TimeoutError):
                await within(done.wait(), timeout)
        finally:
            loop.remove_reader(sock.fileno())
    return [r if r is not None and r <= timeout else None for r in results]
