"""Run inside a network namespace by test_discovery: our Discovery against a real daemon.

Prints one JSON line: the URIs Discovery dialled, and whether anything connected to the
TLS port it announced (the daemon dials after hearing our beacon).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys

from core.discovery import Discovery, InterfacePolicy


async def main(iface: str, password: str, seconds: float) -> None:
    dialled: list[str] = []
    inbound: list[bytes] = []
    both = asyncio.Event()

    async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        inbound.append(await r.read(5))  # a TLS ClientHello starts 16 03 ..
        w.close()
        if dialled:
            both.set()

    servers: list[asyncio.Server] = []

    async def listen_tls(host: str) -> int:
        addr, _, port = host.rpartition(":")
        server = await asyncio.start_server(on_conn, addr.strip("[]"), int(port))
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def dial(uri: str) -> None:
        dialled.append(uri)
        if inbound:
            both.set()

    key = bytes.fromhex("11" * 32)
    disc = Discovery(key, [InterfacePolicy(regex=iface, password=password)], listen_tls, dial)
    await disc.start()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(both.wait(), seconds)
    await disc.close()
    for s in servers:
        s.close()
    print(json.dumps({"dialled": dialled, "inbound": [b.hex() for b in inbound]}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
