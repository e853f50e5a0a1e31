"""Figures for the e2 layers (not a test).

Run: ``.venv/bin/python -m tests.embedded.bench_e2_sessions`` (as root for part 2).

1. sans-IO sessions: encrypt + decrypt of 1280-byte payloads between two managers;
2. with root and yggdrasil: ICMPv6 echo RTT between a real daemon's kernel (TUN, in a
   namespace) and an EmbeddedYggdrasil, both directions, side by side.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import time

from core.address import address_for_key
from core.embedded.node import EmbeddedYggdrasil
from core.embedded.session import Deliver, SessionManager, Transmit
from core.identity import Identity
from tests.lab.fixtures import poll, root_linked_daemon
from tests.lab.lab import Host, lab_available


def bench_sessions(count: int = 20000, size: int = 1280) -> None:
    a_id, b_id = Identity.generate(), Identity.generate()
    a = SessionManager(a_id.seed, clock=time.monotonic)
    b = SessionManager(b_id.seed, clock=time.monotonic)

    def pump() -> int:
        delivered = 0
        for _ in range(10):
            moved = False
            for src, dst, key in ((a, b, a_id.public_key), (b, a, b_id.public_key)):
                for event in src.events():
                    moved = True
                    if isinstance(event, Transmit):
                        dst.handle_data(key, event.data)
                    elif isinstance(event, Deliver):
                        delivered += 1
            if not moved:
                break
        return delivered

    a.write_to(b_id.public_key, b"x")
    pump()
    payload = bytes(size)
    start = time.perf_counter()
    for _ in range(count):
        a.write_to(b_id.public_key, payload)
        for event in a.events():
            assert isinstance(event, Transmit)
            b.handle_data(a_id.public_key, event.data)
        b.events()
    elapsed = time.perf_counter() - start
    print(
        f"sessions sans-IO: {count} x {size} B seal+open in {elapsed:.2f} s = "
        f"{count / elapsed:,.0f} packets/s, {count * size * 8 / elapsed / 1e6:,.0f} Mbit/s"
    )


async def bench_ping() -> None:
    ok, why = lab_available()
    if not ok:
        print(f"ping: {why}; skipped")
        return
    with root_linked_daemon("e2bn", 0xE7, 14799) as lab:
        node = EmbeddedYggdrasil(Identity.generate().seed)
        async with node:
            await node.add_peer(lab.uri)
            d_addr = address_for_key(lab.daemon.public_key)

            async def up() -> bool:
                return (await node.ping(d_addr, 1, 0.1, 1.0))[0] is not None

            await poll(up, 40, 0.2)
            ours = [r for r in await node.ping(d_addr, 50, 0.02, 2.0) if r]
            done = await lab.host.arun("ping", "-6", "-c", "50", "-i", "0.02", "-q",
                                       str(node.address))  # fmt: skip
            out = done.stdout
            kernel_avg = re.search(r"= [0-9.]+/([0-9.]+)/", out)
            print(
                f"echo embedded -> daemon kernel: {len(ours)}/50 answered, median "
                f"{statistics.median(ours) * 1000:.2f} ms"
            )
            print(
                "echo daemon kernel -> embedded (ping -6 -c 50 -i 0.02): avg "
                f"{kernel_avg.group(1) if kernel_avg else '?'} ms; " + out.strip().splitlines()[-2]
            )
            await bench_udp(lab.host, node)


async def bench_udp(host: Host, node: EmbeddedYggdrasil, count: int = 5000) -> None:
    """Kernel UDP (daemon host) -> embedded node: datagrams/s that arrive, 1200 B each."""
    got = 0
    first = last = 0.0

    def on_packet(packet: bytes) -> None:
        nonlocal got, first, last
        if packet[6] == 17:
            got += 1
            last = time.perf_counter()
            first = first or last

    node.set_ipv6_handler(on_packet)
    script = (
        "import socket,time; s=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM);"
        f"d=b'x'*1200; [s.sendto(d, ('{node.address}', 9)) for _ in range({count})]"
    )
    await host.arun("python3", "-c", script)
    await asyncio.sleep(2)
    rate = (got - 1) / (last - first) if got > 1 and last > first else 0.0
    print(
        f"udp daemon kernel -> embedded: {got}/{count} datagrams of 1200 B arrived, "
        f"{rate:,.0f}/s = {rate * 1200 * 8 / 1e6:,.1f} Mbit/s while arriving; not delivered "
        f"by the session layer: {dict(node.conn.sessions_manager.counters)}, by the IPv6 "
        f"layer: {node.ipv6.dropped}"
    )


def main() -> None:
    bench_sessions()
    asyncio.run(bench_ping())


if __name__ == "__main__":
    main()
