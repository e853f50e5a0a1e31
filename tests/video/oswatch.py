"""Watch this process for OS UDP sockets: the embedded backend's calls must open none."""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["udp_socket_inodes"]

_SOCKET_LINK = re.compile(r"socket:\[(\d+)\]")


def _udp_inodes_in_table() -> set[int]:
    inodes: set[int] = set()
    for table in ("/proc/net/udp", "/proc/net/udp6", "/proc/net/udplite", "/proc/net/udplite6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 9:
                inodes.add(int(fields[9]))
    return inodes


def udp_socket_inodes() -> set[int]:
    """Inodes of the UDP sockets (v4 and v6) this process holds open right now."""
    mine: set[int] = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if match := _SOCKET_LINK.fullmatch(link):
            mine.add(int(match.group(1)))
    return mine & _udp_inodes_in_table()
