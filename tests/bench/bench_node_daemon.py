"""Node API over the yggdrasil daemon vs raw sockets over the same TUN vs raw veth.

    sudo .venv/bin/python tests/bench/bench_node_daemon.py [--mb 32] [--rounds 9] [--rtts 1000]

Builds a two-host lab (namespaces, veth, a 0.5.12 daemon in each). In host B one
server process listens three ways, with the same handlers: through a meshsuite Node
attached to B's daemon, as a plain asyncio server on B's mesh address (TUN), and as a
plain asyncio server on B's veth address (no yggdrasil: the ceiling). The client in
host A measures bulk throughput (send N MB, wait for the byte count) and 32-byte round
trips, interleaving the three paths round by round, and prints medians and the node
API's overhead against raw sockets on the same TUN. Not a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.config import NodeConfig
from core.node import Node
from tests.lab.lab import Host, Lab, lab_available

BULK, RTT = 0, 1  # port offsets
NODE_PORT, TUN_PORT, VETH_PORT = 5100, 5200, 5300
CHUNK = 64 * 1024
MSG = 32


# -- server (runs inside host B) ---------------------------------------------------------


async def bulk_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    total = 0
    while data := await reader.read(1 << 20):
        total += len(data)
    writer.write(f"{total}\n".encode())
    await writer.drain()
    writer.close()


async def rtt_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            writer.write(await reader.readexactly(MSG))
    except asyncio.IncompleteReadError:
        pass
    writer.close()


async def serve(admin: str, mesh: str, veth: str, data_dir: str) -> None:
    config = NodeConfig(data_dir=Path(data_dir), backend="yggdrasil", admin_endpoint=admin)
    async with await Node.open(config) as node:
        servers = [
            await node.start_server(bulk_handler, NODE_PORT + BULK),
            await node.start_server(rtt_handler, NODE_PORT + RTT),
        ]
        raw = [
            await asyncio.start_server(bulk_handler, mesh, TUN_PORT + BULK),
            await asyncio.start_server(rtt_handler, mesh, TUN_PORT + RTT),
            await asyncio.start_server(bulk_handler, veth, VETH_PORT + BULK),
            await asyncio.start_server(rtt_handler, veth, VETH_PORT + RTT),
        ]
        print("READY {}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        for s in raw:
            s.close()
        del servers


# -- client (the test process, sockets in host A) ---------------------------------------


async def open_raw(host: Host, address: str, port: int) -> Streams:
    sock = host.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (address, port))
    return await asyncio.open_connection(sock=sock, limit=1 << 20)


Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Opener = Callable[[int], Awaitable[Streams]]


async def bulk_once(opener: Opener, port: int, nbytes: int) -> float:
    reader, writer = await opener(port)
    chunk = b"\x5a" * CHUNK
    start = time.perf_counter()
    sent = 0
    while sent < nbytes:
        writer.write(chunk)
        sent += CHUNK
        await writer.drain()
    writer.write_eof()
    line = await reader.readline()
    elapsed = time.perf_counter() - start
    assert int(line) == sent, (line, sent)
    writer.close()
    await writer.wait_closed()
    return sent / elapsed / 1e6


async def rtt_once(opener: Opener, port: int, count: int) -> float:
    reader, writer = await opener(port)
    msg = b"r" * MSG
    for _ in range(20):  # warm-up
        writer.write(msg)
        await reader.readexactly(MSG)
    samples = []
    for _ in range(count):
        t0 = time.perf_counter()
        writer.write(msg)
        await reader.readexactly(MSG)
        samples.append(time.perf_counter() - t0)
    writer.close()
    await writer.wait_closed()
    return statistics.median(samples) * 1e6


async def client(args: argparse.Namespace) -> None:
    ok, why = lab_available()
    if not ok:
        raise SystemExit(f"bench_node_daemon: {why}")
    with Lab("bench") as lab:
        a, b = lab.host("a"), lab.host("b")
        lab.link(a, b)
        da = a.start_daemon(listen=[a.listen_uri(b, 7001)])
        db = b.start_daemon(peers=[a.peer_uri(b, 7001)])
        lab.wait_peered(da, db)
        lab.wait_reachable(a, db.address)
        server = b.spawn(
            str(Path(__file__).resolve()),
            "--serve",
            db.admin,
            str(db.address),
            str(b.link_address(a)),
            str(b.dir),
        )
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line.startswith("READY"):
            raise SystemExit(
                f"server did not start: {line}{server.stderr.read() if server.stderr else ''}"
            )
        try:
            await measure(args, a, str(db.address), str(b.link_address(a)))
        finally:
            server.communicate(input="", timeout=20)


async def measure(args: argparse.Namespace, a: Host, mesh: str, veth: str) -> None:
    node = await Node.open(a.node_config())
    try:
        paths: dict[str, Opener] = {
            "node API (TUN)": lambda p: node.open_connection(mesh, NODE_PORT + p, limit=1 << 20),
            "raw sockets (TUN)": lambda p: open_raw(a, mesh, TUN_PORT + p),
            "raw veth (ceiling)": lambda p: open_raw(a, veth, VETH_PORT + p),
        }
        bulk: dict[str, list[float]] = {k: [] for k in paths}
        rtt: dict[str, list[float]] = {k: [] for k in paths}
        nbytes = args.mb * 1024 * 1024
        for opener in paths.values():  # warm-up round, not counted
            await bulk_once(opener, BULK, nbytes // 4)
        names = list(paths)
        for r in range(args.rounds):  # interleaved, and the order rotates every round
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                bulk[name].append(await bulk_once(paths[name], BULK, nbytes))
            for name in order:
                rtt[name].append(await rtt_once(paths[name], RTT, args.rtts))
    finally:
        await node.close()
    report(bulk, rtt, args)


def report(
    bulk: dict[str, list[float]], rtt: dict[str, list[float]], args: argparse.Namespace
) -> None:
    print(
        f"\nbench_node_daemon: yggdrasil 0.5.12, 2 namespaces on one veth; {args.mb} MB bulk, "
        f"{args.rtts} x {MSG}-byte round trips; {args.rounds} interleaved rounds; medians\n"
    )
    print(f"{'path':<22}{'bulk MB/s':>12}{'RTT µs':>10}   (rounds: MB/s | µs)")
    for name in bulk:
        rounds = " ".join(f"{v:.0f}" for v in bulk[name])
        rounds += " | µs " + " ".join(f"{v:.0f}" for v in rtt[name])
        print(
            f"{name:<22}{statistics.median(bulk[name]):>12.1f}"
            f"{statistics.median(rtt[name]):>10.1f}   ({rounds})"
        )
    node, raw = "node API (TUN)", "raw sockets (TUN)"
    # Paired per round (same minute, same machine load), then the median over rounds:
    # the load of a shared machine drifts more between rounds than within one.
    over_b = [100 * (r - n) / r for n, r in zip(bulk[node], bulk[raw], strict=True)]
    over_r = [100 * (n - r) / r for n, r in zip(rtt[node], rtt[raw], strict=True)]
    print(
        "\nnode API overhead against raw sockets on the same TUN, paired per round "
        "(target ≤ 5 %; negative = the node path measured faster):\n"
        f"  throughput {statistics.median(over_b):+.1f} % "
        f"(rounds {' '.join(f'{v:+.0f}' for v in over_b)})\n"
        f"  round trip {statistics.median(over_r):+.1f} % "
        f"(rounds {' '.join(f'{v:+.0f}' for v in over_r)})"
    )
    veth_b = statistics.median(bulk["raw veth (ceiling)"])
    raw_b = statistics.median(bulk[raw])
    print(f"the daemon TUN path reaches {100 * raw_b / veth_b:.0f} % of raw veth throughput")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serve", nargs=4, metavar=("ADMIN", "MESH", "VETH", "DIR"))
    parser.add_argument("--mb", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--rtts", type=int, default=1000)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(*args.serve))
    else:
        asyncio.run(client(args))


if __name__ == "__main__":
    main()
