"""A veth from the test process's (root) namespace into a lab host.

Embedded nodes run in the test process; this link lets them peer with a lab host's
daemon. Names stay inside the lab's ``lb-<lab>-`` prefix so a killed run is cleaned by
the next one (deleting the host's namespace deletes the pair).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from tests.lab.lab import Host


@dataclass(frozen=True)
class RootLink:
    root_if: str
    host_if: str
    root_addr: str
    host_addr: str

    def close(self) -> None:
        subprocess.run(["ip", "link", "del", self.root_if], capture_output=True, check=False)


def link_root(host: Host, subnet: int) -> RootLink:
    """``fd6c:62<subnet>::1`` here, ``::2`` in ``host``; ``subnet`` keeps labs apart."""
    prefix = host.ns.rsplit("-", 1)[0]  # lb-<lab>
    link = RootLink(
        root_if=f"{prefix}-r"[:15],
        host_if=f"{prefix}-r{host.name}"[:15],
        root_addr=f"fd6c:62{subnet:02x}::1",
        host_addr=f"fd6c:62{subnet:02x}::2",
    )
    cmd = ["ip", "link", "add", link.root_if, "type", "veth", "peer", "name", link.host_if]
    subprocess.run([*cmd, "netns", host.ns], check=True, capture_output=True)
    for args in (
        ["-6", "addr", "add", f"{link.root_addr}/64", "dev", link.root_if, "nodad"],
        ["link", "set", link.root_if, "up"],
    ):
        subprocess.run(["ip", *args], check=True, capture_output=True)
    host.run("ip", "-6", "addr", "add", f"{link.host_addr}/64", "dev", link.host_if, "nodad")
    host.run("ip", "link", "set", link.host_if, "up")
    return link
