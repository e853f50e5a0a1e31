"""Sockets and interface facts in a chosen network namespace.

A socket belongs to the network namespace of the thread that created it, for its whole
life, whatever thread uses it later. :class:`NetNamespace` keeps one worker thread that
has entered the namespace (``setns(fd, CLONE_NEWNET)``) and creates sockets there, so
one process (and one event loop) can run a node next to a daemon that lives in another
namespace — the lab does this, and so can a node whose daemon runs in a netns.
``NetNamespace(None)`` is the caller's own namespace, with no thread.
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import os
import socket
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from core.errors import MeshError

__all__ = ["CLONE_NEWNET", "InterfaceAddress", "NetNamespace", "parse_if_inet6", "setns"]

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
IFA_F_TENTATIVE = 0x40
IFA_F_DADFAILED = 0x08
T = TypeVar("T")


def setns(path: str) -> None:
    """Move the calling thread into the network namespace at ``path``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class InterfaceAddress:
    address: ipaddress.IPv6Address
    ifindex: int
    prefix_len: int
    flags: int
    ifname: str

    @property
    def usable(self) -> bool:
        """Assigned and past duplicate address detection (a socket can bind to it)."""
        return not self.flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED)


def parse_if_inet6(text: str) -> list[InterfaceAddress]:
    """``/proc/net/if_inet6``: ``addr ifindex plen scope flags name`` in hex, one per line."""
    out: list[InterfaceAddress] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 6 or len(parts[0]) != 32:
            continue
        try:
            out.append(
                InterfaceAddress(
                    address=ipaddress.IPv6Address(bytes.fromhex(parts[0])),
                    ifindex=int(parts[1], 16),
                    prefix_len=int(parts[2], 16),
                    flags=int(parts[4], 16),
                    ifname=parts[5],
                )
            )
        except ValueError:
            continue
    return out


def _read_if_inet6() -> str:
    for path in ("/proc/thread-self/net/if_inet6", "/proc/self/net/if_inet6"):
        try:
            with open(path) as fh:
                return fh.read()
        except FileNotFoundError:
            continue
    return ""  # no IPv6 at all


class NetNamespace:
    """Creates sockets and reads interface addresses in one network namespace."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._pool: ThreadPoolExecutor | None = None
        if path is not None:
            if not os.path.exists(path):
                raise MeshError(
                    f"network namespace {path} does not exist (ip netns list shows the names; "
                    "use /var/run/netns/NAME)"
                )
            self._pool = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="netns", initializer=setns, initargs=(path,)
            )

    def _run(self, fn: Callable[[], T]) -> T:
        if self._pool is None:
            return fn()
        try:
            return self._pool.submit(fn).result()
        except BrokenExecutor:
            raise MeshError(
                f"cannot enter the network namespace {self.path}: entering one needs root "
                "(CAP_SYS_ADMIN); run the node as root or inside the namespace (ip netns exec)"
            ) from None

    def socket(self, family: int, type: int, proto: int = 0) -> socket.socket:
        return self._run(lambda: socket.socket(family, type, proto))

    def addresses(self) -> list[InterfaceAddress]:
        return parse_if_inet6(self._run(_read_if_inet6))

    def find(self, address: ipaddress.IPv6Address) -> InterfaceAddress | None:
        for entry in self.addresses():
            if entry.address == address:
                return entry
        return None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __str__(self) -> str:
        return self.path or "the current network namespace"
