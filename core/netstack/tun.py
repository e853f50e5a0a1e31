"""A Linux TUN device as a packet pipe for a :class:`~core.netstack.stack.NetStack`
(``IFF_TUN | IFF_NO_PI``: each read/write is one raw IPv6 packet).

Needs CAP_NET_ADMIN to create the device.  The file descriptor keeps working after
the interface is moved into another network namespace, which is how the tests put the
kernel on the other side of the wire.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import struct
from collections.abc import Callable

__all__ = ["TunDevice"]

log = logging.getLogger(__name__)

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_MAX_PACKET = 65535 + 40
_BATCH = 256  # packets read per wake-up, bounding one callback's work


class TunDevice:
    """An open TUN interface. Use :meth:`open`, then :meth:`attach` to a receiver."""

    def __init__(self, fd: int, name: str) -> None:
        self._fd = fd
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self.dropped_writes = 0

    @classmethod
    def open(cls, name: str) -> TunDevice:
        if len(name.encode()) > 15:
            raise ValueError(f"interface name {name!r} is longer than 15 bytes")
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot open /dev/net/tun ({exc.strerror}); need root"
            ) from exc
        try:
            ifr = struct.pack("16sH22x", name.encode(), _IFF_TUN | _IFF_NO_PI)
            res = fcntl.ioctl(fd, _TUNSETIFF, ifr)
        except OSError as exc:
            os.close(fd)
            raise OSError(
                exc.errno, f"TUNSETIFF {name} failed ({exc.strerror}); need CAP_NET_ADMIN"
            ) from exc
        actual = res[:16].rstrip(b"\x00").decode()
        return cls(fd, actual)

    def fileno(self) -> int:
        return self._fd

    def write(self, packet: bytes) -> None:
        """Send one packet to the kernel; a full queue drops it (a lossy link)."""
        try:
            os.write(self._fd, packet)
        except BlockingIOError:
            self.dropped_writes += 1

    def read_batch(self) -> list[bytes]:
        packets: list[bytes] = []
        for _ in range(_BATCH):
            try:
                packets.append(os.read(self._fd, _MAX_PACKET))
            except BlockingIOError:
                break
        return packets

    def attach(
        self,
        loop: asyncio.AbstractEventLoop,
        receive: Callable[[bytes], None],
        after_batch: Callable[[], None] | None = None,
    ) -> None:
        """Deliver every packet the kernel sends to ``receive`` (until :meth:`close`);
        ``after_batch`` (e.g. ``NetStack.flush``) runs after each batch read."""
        if self._loop is not None:
            raise RuntimeError(f"TUN {self.name} is already attached")
        self._loop = loop

        def on_readable() -> None:
            for packet in self.read_batch():
                receive(packet)
            if after_batch is not None:
                after_batch()

        loop.add_reader(self._fd, on_readable)

    def close(self) -> None:
        if self._fd < 0:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop = None
        os.close(self._fd)
        self._fd = -1
