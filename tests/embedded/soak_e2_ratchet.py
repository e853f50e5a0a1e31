"""Soak (not a test, ~3 minutes): session key ratcheting against a real daemon.

Run as root: ``.venv/bin/python -m tests.embedded.soak_e2_ratchet``. Pings between an
EmbeddedYggdrasil and a yggdrasil 0.5.12 daemon's kernel (TUN in a namespace) every
5 s in both directions for 170 s, so both sides ratchet keys several times (at most
once a minute each); prints our key sequence numbers and any loss.
"""

from __future__ import annotations

import asyncio
import time

from core.address import address_for_key
from core.embedded.node import EmbeddedYggdrasil
from core.identity import Identity
from tests.lab.fixtures import poll, root_linked_daemon


async def soak(duration: float = 170.0) -> None:
    with root_linked_daemon("e2sk", 0xE8, 14798) as lab:
        host, d_key = lab.host, lab.daemon.public_key
        node = EmbeddedYggdrasil(Identity.generate().seed)
        async with node:
            await node.add_peer(lab.uri)
            d_addr = address_for_key(d_key)

            async def up() -> bool:
                return (await node.ping(d_addr, 1, 0.1, 1.0))[0] is not None

            await poll(up, 40, 0.2)
            start = time.monotonic()
            lost_ours = lost_kernel = 0
            manager = node.conn.sessions_manager
            while time.monotonic() - start < duration:
                ours = await node.ping(d_addr, 1, 0.1, 2.0)
                lost_ours += ours[0] is None
                done = await host.arun("ping", "-6", "-c", "1", "-W", "2", str(node.address),
                                       check=False)  # fmt: skip
                out = done.stdout
                lost_kernel += "1 received" not in out
                info = manager._sessions[d_key]
                print(
                    f"t={time.monotonic() - start:5.1f}s local_key_seq="
                    f"{info.local_key_seq} remote_key_seq={info.remote_key_seq} "
                    f"counters={dict(manager.counters)}",
                    flush=True,
                )
                await asyncio.sleep(5)
            print(f"lost: ours {lost_ours}, kernel's {lost_kernel}")


if __name__ == "__main__":
    asyncio.run(soak())
