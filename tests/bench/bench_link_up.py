"""How fast the embedded node's link to a just-started 0.5.12 daemon comes up, N tries.

    sudo .venv/bin/python tests/bench/bench_link_up.py [--tries 50] [--load 2] [--scheme tcp]

Builds a one-host lab (a namespace and a veth from this process's namespace into it).
Each try starts, at the same moment, a fresh yggdrasil daemon in the host (listening on
its end of the veth) and a fresh embedded node here with that listener as its static
peer, then measures from the moment both sides are started (the daemon answers its
admin socket, the node is open) to the link being up on both sides and to the first
answered ping of the daemon's address. ``--load N`` runs N busy processes meanwhile
(started and killed here, by pid). Prints how many links came up within 5 s, the
median and the slowest. Not a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.config import NodeConfig
from core.identity import Identity
from core.node import Node
from tests.lab.lab import Daemon, Host, Lab, lab_available

WITHIN = 5.0
GIVE_UP = 60.0


async def one_try(host: Host, listen: str, data: Path) -> tuple[float, float]:
    """(link up, first ping) in seconds after both sides were started."""
    loop = asyncio.get_running_loop()
    daemon_started = loop.create_future()

    def start_daemon() -> Daemon:
        daemon = host.start_daemon(listen=[listen])  # with its TUN: it answers pings
        loop.call_soon_threadsafe(daemon_started.set_result, time.monotonic())
        return daemon

    daemon_task = asyncio.ensure_future(asyncio.to_thread(start_daemon))
    config = NodeConfig(data_dir=data, backend="embedded", peers=(listen,))
    try:
        async with await Node.open(config, Identity.generate()) as node:
            node_started = time.monotonic()
            daemon = await daemon_task
            both = max(node_started, await daemon_started)
            address = str(daemon.address)
            up = ping = 0.0
            async with asyncio.timeout(GIVE_UP):
                while not up:
                    if any(p.up for p in await node.peers()) and daemon.peers_up():
                        up = time.monotonic() - both
                    else:
                        await asyncio.sleep(0.02)
                while not ping:
                    if (await node.ping(address, count=1, timeout=1))[0] is not None:
                        ping = time.monotonic() - both
            return up, ping
    finally:
        await asyncio.gather(daemon_task, return_exceptions=True)
        if host.daemon is not None:
            await asyncio.to_thread(host.daemon.stop)
            host.daemon = None


def busy(n: int) -> list[subprocess.Popen[bytes]]:
    """``n`` processes keeping a core busy each (the caller kills them)."""
    return [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(n)]


async def run(args: argparse.Namespace) -> int:
    ok, why = lab_available()
    if not ok:
        print(f"cannot run the lab: {why}", file=sys.stderr)
        return 2
    load = busy(args.load)
    ups: list[float] = []
    pings: list[float] = []
    failed = 0
    try:
        with Lab("lup") as lab:
            host = lab.host("a")
            root = host.link_root(0x51)
            for i in range(args.tries):
                listen = f"{args.scheme}://[{root.host_addr}]:{args.port + i}"
                try:
                    up, ping = await one_try(host, listen, lab.dir / f"node{i}")
                except TimeoutError:
                    failed += 1
                    print(f"try {i + 1}: no link within {GIVE_UP:g} s", flush=True)
                    continue
                ups.append(up)
                pings.append(ping)
                print(f"try {i + 1}: link up {up:.2f} s, first ping {ping:.2f} s", flush=True)
    finally:
        for proc in load:
            proc.kill()
            proc.wait()
    within = sum(1 for u in ups if u <= WITHIN)
    print(f"\n{args.scheme}, {args.tries} tries, {args.load} busy processes:")
    print(f"  link up within {WITHIN:g} s: {within}/{args.tries} (never: {failed})")
    if ups:
        print(f"  link up:    median {statistics.median(ups):.2f} s, slowest {max(ups):.2f} s")
        print(f"  first ping: median {statistics.median(pings):.2f} s, slowest {max(pings):.2f} s")
    return 0 if within == args.tries else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tries", type=int, default=50)
    parser.add_argument("--load", type=int, default=2, help="busy processes meanwhile")
    parser.add_argument("--scheme", choices=("tcp", "tls"), default="tcp")
    parser.add_argument("--port", type=int, default=13100)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
