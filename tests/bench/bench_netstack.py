"""Userspace TCP (core.netstack) against the kernel, side by side in one run.

    sudo .venv/bin/python -m tests.bench.bench_netstack [--mb 64] [--pings 500] [--runs 5]

Paths compared (all with a 65535-byte MTU, Yggdrasil's):
- netstack<->netstack: two NetStacks in this process, packets handed over in-loop;
- netstack->kernel / kernel->netstack: our stack on a TUN fd, the Linux kernel in a
  namespace (tests/netstack/_tunlab.py) running tests/bench/bench_peer.py;
- kernel<->kernel: two namespaces joined by a veth pair, bench_peer.py on both ends
  (the ceiling; no userspace per packet at all).

Figures: bulk throughput (MB/s over --mb MiB, median of --runs) and small-message
round trip (64-byte ping-pong, median over --pings per run, median of runs).  Ratios
are against kernel<->kernel.  The machine is shared: read the ratios, not absolutes.
Needs root (TUN, namespaces); without it only the in-process row is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from core.netstack.stack import NetStack
from tests.netstack._link import B_ADDR, stack_pair
from tests.netstack._tunlab import KERNEL_ADDR, STACK_ADDR, lab_available, tun_lab

PEER = str(Path(__file__).with_name("bench_peer.py"))
MSG = 64
CHUNK = bytes(1 << 20)


# ---------------------------------------------------------------------- helpers
async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await reader.read(1 << 20):
        pass
    writer.write(b"ok")
    await writer.drain()
    writer.close()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
    writer.close()


async def send_bulk(stack: NetStack, host: str, port: int, nbytes: int) -> float:
    reader, writer = await stack.open_connection(host, port)
    t0 = time.perf_counter()
    left = nbytes
    while left > 0:
        writer.write(CHUNK[: min(left, len(CHUNK))])
        left -= len(CHUNK)
        await writer.drain()
    writer.write_eof()
    assert await reader.read(2) == b"ok"
    elapsed = time.perf_counter() - t0
    writer.close()
    return elapsed


async def recv_bulk(stack: NetStack, host: str, port: int, nbytes: int) -> float:
    reader, writer = await stack.open_connection(host, port)
    t0 = time.perf_counter()
    got = 0
    while data := await reader.read(1 << 20):
        got += len(data)
    elapsed = time.perf_counter() - t0
    assert got == nbytes, (got, nbytes)
    writer.close()
    return elapsed


async def ping_pong(stack: NetStack, host: str, port: int, count: int) -> float:
    reader, writer = await stack.open_connection(host, port)
    msg = b"x" * MSG
    samples = []
    for _ in range(count):
        t = time.perf_counter()
        writer.write(msg)
        await reader.readexactly(MSG)
        samples.append(time.perf_counter() - t)
    writer.close()
    return statistics.median(samples)


async def repeat(runs: int, fn: Callable[[], Awaitable[float]]) -> list[float]:
    return [await fn() for _ in range(runs)]


def run_peer(cmd: list[str]) -> dict[str, object]:
    out = subprocess.run(cmd, capture_output=True, check=True, timeout=300).stdout
    result: dict[str, object] = json.loads(out.splitlines()[-1])
    return result


async def start_server(cmd: list[str]) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 15)
    assert line == b"ready\n", line
    return proc


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


# ---------------------------------------------------------------------- paths
async def bench_in_process(nbytes: int, pings: int, runs: int) -> dict[str, list[float]]:
    a, b = stack_pair()
    async with a, b:
        await b.start_server(sink, 9000)
        await b.start_server(echo, 9001)
        bulk = await repeat(runs, lambda: send_bulk(a, B_ADDR, 9000, nbytes))
        rtt = await repeat(runs, lambda: ping_pong(a, B_ADDR, 9001, pings))
    return {"send": bulk, "rtt": rtt}


async def bench_tun(nbytes: int, pings: int, runs: int) -> dict[str, list[float]]:
    loop = asyncio.get_running_loop()
    with tun_lab("bench") as lab:
        stack = NetStack([STACK_ADDR], lab.tun.write)
        lab.tun.attach(loop, stack.receive_packet, stack.flush)
        procs = []
        try:
            py = sys.executable
            for args in (
                ["sink", KERNEL_ADDR, "9000"],
                ["source", KERNEL_ADDR, "9001", str(nbytes)],
                ["echo", KERNEL_ADDR, "9002"],
            ):
                procs.append(await start_server(lab.netns_cmd(py, PEER, *args)))
            send = await repeat(runs, lambda: send_bulk(stack, KERNEL_ADDR, 9000, nbytes))
            recv = await repeat(runs, lambda: recv_bulk(stack, KERNEL_ADDR, 9001, nbytes))
            rtt = await repeat(runs, lambda: ping_pong(stack, KERNEL_ADDR, 9002, pings))
        finally:
            for proc in procs:
                await stop(proc)
            stack.close()
    return {"send": send, "recv": recv, "rtt": rtt}


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _veth_lab(ns_a: str, ns_b: str, veth_a: str, veth_b: str, made: list[str]) -> None:
    """Two namespaces joined by a veth pair with Yggdrasil's MTU."""
    for ns in (ns_a, ns_b):
        _ip("netns", "add", ns)
        made.append(ns)
    _ip("link", "add", veth_a, "netns", ns_a, "type", "veth", "peer", veth_b, "netns", ns_b)
    for ns, dev, addr in ((ns_a, veth_a, "fd00:bb::1"), (ns_b, veth_b, "fd00:bb::2")):
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "link", "set", dev, "mtu", "65535", "up")
        _ip("-n", ns, "addr", "add", f"{addr}/64", "dev", dev, "nodad")


def _veth_down(made: list[str]) -> None:
    for ns in made:  # deleting a namespace deletes its end of the veth, and so both
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


async def bench_veth(nbytes: int, pings: int, runs: int) -> dict[str, list[float]]:
    tag = os.getpid() % 100000
    ns_a, ns_b = f"ns-bva-{tag}", f"ns-bvb-{tag}"
    veth_a, veth_b = f"ns-bva{tag}"[:15], f"ns-bvb{tag}"[:15]
    made: list[str] = []
    procs = []
    try:
        _veth_lab(ns_a, ns_b, veth_a, veth_b, made)
        b_cmd = ["ip", "netns", "exec", ns_b, sys.executable, PEER]
        a_cmd = ["ip", "netns", "exec", ns_a, sys.executable, PEER]
        procs.append(await start_server([*b_cmd, "sink", "fd00:bb::2", "9000"]))
        procs.append(await start_server([*b_cmd, "echo", "fd00:bb::2", "9002"]))
        send, rtt = [], []
        for _ in range(runs):
            res = await asyncio.to_thread(
                run_peer, [*a_cmd, "send", "fd00:bb::2", "9000", str(nbytes)]
            )
            send.append(float(res["seconds"]))  # type: ignore[arg-type]
        for _ in range(runs):
            res = await asyncio.to_thread(
                run_peer, [*a_cmd, "rtt", "fd00:bb::2", "9002", str(pings), str(MSG)]
            )
            rtt.append(statistics.median(res["samples"]))  # type: ignore[arg-type]
    finally:
        for proc in procs:
            await stop(proc)
        _veth_down(made)
    return {"send": send, "recv": send, "rtt": rtt}


# ---------------------------------------------------------------------- report
def mbps(nbytes: int, seconds: list[float]) -> float:
    return nbytes / statistics.median(seconds) / 1e6


def report(nbytes: int, rows: dict[str, tuple[list[float] | None, list[float]]]) -> None:
    base_bulk, base_rtt = rows.get("kernel<->kernel (veth)", (None, []))
    ref_mb = mbps(nbytes, base_bulk) if base_bulk else None
    ref_rtt = statistics.median(base_rtt) if base_rtt else None
    print(f"\nbulk: {nbytes / 2**20:.0f} MiB per run; RTT: {MSG}-byte ping-pong; medians of runs")
    print(f"{'path':<28}{'bulk MB/s':>12}{'x kernel':>10}{'RTT us':>10}{'x kernel':>10}")
    for name, (bulk, rtt) in rows.items():
        mb = mbps(nbytes, bulk) if bulk else None
        r = statistics.median(rtt) * 1e6 if rtt else None
        cols = [
            f"{mb:12.1f}" if mb else f"{'-':>12}",
            f"{mb / ref_mb:10.3f}" if mb and ref_mb else f"{'-':>10}",
            f"{r:10.0f}" if r else f"{'-':>10}",
            f"{r / (ref_rtt * 1e6):10.1f}" if r and ref_rtt else f"{'-':>10}",
        ]
        print(f"{name:<28}{''.join(cols)}")


async def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--mb", type=int, default=64, help="MiB per bulk run")
    ap.add_argument("--pings", type=int, default=500, help="round trips per RTT run")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    nbytes = args.mb * 2**20
    rows: dict[str, tuple[list[float] | None, list[float]]] = {}
    ok, reason = lab_available()
    if ok:
        veth = await bench_veth(nbytes, args.pings, args.runs)
        rows["kernel<->kernel (veth)"] = (veth["send"], veth["rtt"])
    else:
        print(f"kernel rows skipped: {reason}")
    inproc = await bench_in_process(nbytes, args.pings, args.runs)
    rows["netstack<->netstack"] = (inproc["send"], inproc["rtt"])
    if ok:
        tun = await bench_tun(nbytes, args.pings, args.runs)
        rows["netstack->kernel (TUN)"] = (tun["send"], tun["rtt"])
        rows["kernel->netstack (TUN)"] = (tun["recv"], [])
    report(nbytes, rows)


if __name__ == "__main__":
    asyncio.run(main())
