"""A network namespace joined to the root namespace by a veth pair (e2 tests only).

Names carry the ``e2`` tag and the test process id, addresses are ``fd00:e2::/64``
(link addresses of our own veth). Everything is deleted in ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Lab:
    netns: str
    host_if: str
    ns_if: str
    host_addr: str
    ns_addr: str


async def sh(*argv: str, check: bool = True) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {text}")
    return text


@contextlib.asynccontextmanager
async def veth_lab(index: int = 0) -> AsyncIterator[Lab]:
    tag = f"{os.getpid() % 100000}{index}"
    lab = Lab(
        netns=f"e2-x{tag}",
        host_if=f"e2h{tag}"[:15],
        ns_if=f"e2n{tag}"[:15],
        host_addr=f"fd00:e2:{index}::1",
        ns_addr=f"fd00:e2:{index}::2",
    )
    try:
        await sh("ip", "netns", "add", lab.netns)
        await sh("ip", "link", "add", lab.host_if, "type", "veth", "peer", "name", lab.ns_if)
        await sh("ip", "link", "set", lab.ns_if, "netns", lab.netns)
        await sh("ip", "addr", "add", f"{lab.host_addr}/64", "dev", lab.host_if, "nodad")
        await sh("ip", "link", "set", lab.host_if, "up")
        ns = ["ip", "netns", "exec", lab.netns]
        await sh(*ns, "ip", "addr", "add", f"{lab.ns_addr}/64", "dev", lab.ns_if, "nodad")
        await sh(*ns, "ip", "link", "set", lab.ns_if, "up")
        await sh(*ns, "ip", "link", "set", "lo", "up")
        yield lab
    finally:
        await sh("ip", "link", "del", lab.host_if, check=False)
        await sh("ip", "netns", "del", lab.netns, check=False)
