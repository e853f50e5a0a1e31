"""A namespace whose kernel sits on the far side of a TUN device we hold.

The kernel side gets fd00:ab::1/64 on ``ns-tunN`` inside namespace ``ns-<id>``; our
NetStack owns fd00:ab::2 by reading and writing raw IPv6 packets on the TUN fd.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from core.netstack.tun import TunDevice
from tests.conftest import require

KERNEL_ADDR = "fd00:ab::1"
STACK_ADDR = "fd00:ab::2"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def lab_available() -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "needs root for TUN devices and network namespaces"
    if not os.path.exists("/dev/net/tun"):
        return False, "needs /dev/net/tun"
    if shutil.which("ip") is None:
        return False, "needs iproute2 (ip)"
    return True, ""


@dataclass
class TunLab:
    namespace: str
    tun: TunDevice
    mtu: int

    def netns_cmd(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *args]


@contextlib.contextmanager
def tun_lab(tag: str, mtu: int = 65535) -> Iterator[TunLab]:
    ok, reason = lab_available()
    require(ok, reason)
    ns = f"ns-{tag}-{os.getpid() % 100000}"
    name = f"ns-tun{os.getpid() % 10000}{tag[:2]}"[:15]
    tun = TunDevice.open(name)
    created = False
    try:
        _ip("netns", "add", ns)
        created = True
        _ip("link", "set", tun.name, "netns", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "link", "set", tun.name, "mtu", str(mtu), "up")
        _ip("-n", ns, "addr", "add", f"{KERNEL_ADDR}/64", "dev", tun.name, "nodad")
        yield TunLab(ns, tun, mtu)
    finally:
        tun.close()
        if created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
