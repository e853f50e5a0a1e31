"""Mail throughput and latency: submit at A, stored at B, next to a bare aiosmtpd sink.

Run (as root, for the real-daemon lab)::

    .venv/bin/python tests/bench/bench_mail.py [--mails 1000] [--size 10240] [--clients 4]
        [--path lab|embedded]

``lab`` (default when root): two network namespaces with a real yggdrasil 0.5.12 daemon
each; node A and node B are separate processes attached to them (as ``mesh up`` runs
them), so the mesh leg crosses both TUNs and each node has its own interpreter.
``embedded``: the same two processes on the embedded backend (Yggdrasil 0.5 in Python,
userspace TCP), linked over one loopback TCP connection; no root needed.

Two runs over the same path, printed side by side:

* **meshsuite**: ``--clients`` smtplib connections (threads of this process) submit at
  A's submission port (AUTH, sender and From: checks, queue commit before 250); A's queue
  runner delivers over mesh SMTP; B verifies the sender and commits to its MailStore
  before its 250. Latency = ``sendmail`` start → the commit at B (B's new-mail callback).
* **bare sink**: as many mails of the same size sent by a node at A with the MTA's SMTP
  client the way its queue runner sends a backlog (sessions of up to 20 messages, 8
  sessions at a time), to an aiosmtpd server on B's mesh address that only notes the
  arrival (same socket options as the MTA: TCP_NODELAY). Latency = session start →
  arrival.

Timestamps are ``time.monotonic()`` (CLOCK_MONOTONIC: one clock for all processes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


from apps.mail.config import MailConfig
from apps.mail.passwords import set_password
from apps.mail.runner import MAX_BATCH
from apps.mail.service import MailService
from apps.mail.smtp_client import ClientSession, Envelope, run_session
from apps.mail.smtp_server import MeshSMTP, ehlo_with_pipelining
from core.config import NodeConfig
from core.identity import load_or_create_identity
from core.node import Node

PASSWORD = "benchmark password"
SINK_PORT = 2526
SUBMISSION_PORT = 1025
SINK_CONCURRENCY = 8
LIGHT_MAILS = 100
_MID = re.compile(rb"^Message-ID:\s*(<[^>]+>)", re.M | re.I)


def _body(size: int) -> str:
    line = "The quick brown fox jumps over the lazy dog 0123456789 ABCDEFGHIJKLMNOPQRSTU\n"
    return (line * (size // len(line) + 1))[:size]


def _message(frm: str, to: str, i: int, body: str, tag: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = frm, to, f"bench {i}"
    msg["Message-ID"] = f"<{tag}-{i}@bench.mesh>"
    msg.set_content(body)
    return msg


def _render(msg: EmailMessage) -> bytes:
    return msg.as_bytes(policy=SMTP_POLICY)  # CRLF line ends, as on the wire


def _mail_config(n: int, smtp_port: int = SUBMISSION_PORT) -> dict[str, Any]:
    # 1,000 mails from one peer in seconds: lift B's per-peer rate limit for the bench.
    return {
        "smtp": f"127.0.0.1:{smtp_port}",
        "imap": f"127.0.0.1:{smtp_port + 118}",
        "rate_burst": 10 * n,
        "rate_per_minute": 600 * n,
        "retry_initial": 0.5,  # a mail deferred while the embedded path is looked up
        "retry_max": 1,
    }


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _summary(name: str, start: dict[str, float], end: dict[str, float]) -> dict[str, Any]:
    lat = [end[k] - start[k] for k in end]
    elapsed = max(end.values()) - min(start.values())
    return {
        "name": name,
        "mails": len(end),
        "seconds": elapsed,
        "rate": len(end) / elapsed,
        "p50": _pct(lat, 0.5) * 1000,
        "p99": _pct(lat, 0.99) * 1000,
        "mean": statistics.fmean(lat) * 1000,
    }


def _emit(kind: str, stamp: float, mid: str) -> None:
    sys.stdout.write(f"{kind} {stamp:.6f} {mid}\n")


# -- roles run as separate processes inside lab hosts ----------------------------------------


async def _attached_node(data_dir: Path, spec: str) -> Node:
    """``unix://...`` (a daemon's admin socket), ``listen:URI`` or ``peer:URI`` (embedded)."""
    kind, _, uri = spec.partition(":")
    if kind in ("listen", "peer"):
        identity, _ = load_or_create_identity(data_dir)
        config = NodeConfig(
            data_dir=data_dir,
            backend="embedded",
            listen=(uri,) if kind == "listen" else (),
            peers=(uri,) if kind == "peer" else (),
        )
        return await Node.open(config, identity)
    return await Node.open(NodeConfig(data_dir=data_dir, backend="yggdrasil", admin_endpoint=spec))


async def _until_reachable(node: Node, target: str) -> None:
    """The first packets to a new destination may go while the path is looked up."""
    for _ in range(120):
        with contextlib.suppress(Exception):
            if (await node.ping(target, count=1, timeout=1))[0] is not None:
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{target} is not reachable")


async def _until_sigterm() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


async def role_node(data_dir: Path, spec: str, n: int, smtp_port: int) -> None:
    """A mail node; reports each INBOX commit as ``stored <t> <Message-ID>``."""
    node = await _attached_node(data_dir, spec)
    service = MailService(node, MailConfig.from_mapping(_mail_config(n, smtp_port)), data_dir)
    await service.start()
    assert service.store is not None
    store = service.store
    fresh: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
    store.subscribe_new_mail(
        lambda mailbox, uid: (
            fresh.put_nowait((uid, time.monotonic())) if mailbox == "INBOX" else None
        )
    )

    async def report() -> None:
        # Whatever arrived meanwhile in one read of the headers: the bench's own reads
        # should not take the store from the deliveries it measures.
        while True:
            got = [await fresh.get()]
            await asyncio.sleep(0.05)  # stamps are taken already; reads come in batches
            while not fresh.empty():
                got.append(fresh.get_nowait())
            heads = await store.fetch_bodies("INBOX", [uid for uid, _ in got], header_only=True)
            for uid, stamp in got:
                m = _MID.search(heads.get(uid, b""))
                _emit("stored", stamp, m.group(1).decode() if m else "?")
            sys.stdout.flush()

    print(f"ready {node.mail_address}", flush=True)
    async with asyncio.TaskGroup() as tg:
        reporter = tg.create_task(report())
        await _until_sigterm()
        reporter.cancel()
    await service.close()
    await node.close()


class _Sink:
    # The same protocol as the MTA's mesh server (PIPELINING offered): a fair ceiling.
    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        return ehlo_with_pipelining(session, hostname, responses)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        stamp = time.monotonic()
        m = _MID.search(envelope.original_content)
        _emit("arrived", stamp, m.group(1).decode() if m else "?")
        sys.stdout.flush()
        return "250 OK"


async def role_sink(data_dir: Path, spec: str) -> None:
    node = await _attached_node(data_dir, spec)
    loop = asyncio.get_running_loop()
    sink = _Sink()
    await node.create_server(
        lambda: MeshSMTP(sink, hostname="sink", data_size_limit=None, loop=loop), SINK_PORT
    )
    print(f"ready {node.mail_address}", flush=True)
    await _until_sigterm()
    await node.close()


async def _send_sessions(node: Node, target: str, n: int, size: int, started: Any) -> None:
    """n mails to ``target``'s sink in sessions of MAX_BATCH, 8 sessions at a time."""
    body, sender = _body(size), str(node.mail_address)
    slots = asyncio.Semaphore(SINK_CONCURRENCY)

    async def session(ids: range) -> None:
        msgs = [_message(sender, target, i, body, "sink") for i in ids]
        async with slots:
            for msg in msgs:
                started(str(msg["Message-ID"]), time.monotonic())
            reader, writer = await node.open_connection(target, SINK_PORT)
            txn = ClientSession(
                "[IPv6:bench]", [Envelope(sender, (target,), _render(m)) for m in msgs]
            )
            outcomes = await run_session(txn, reader, writer, timeout=60)
            if not all(o.delivered for o in outcomes):
                print(f"failed {outcomes}", file=sys.stderr)

    await asyncio.gather(
        *(session(range(i, min(i + MAX_BATCH, n))) for i in range(0, n, MAX_BATCH))
    )


async def role_sink_sender(data_dir: Path, spec: str, target: str, n: int, size: int) -> None:
    node = await _attached_node(data_dir, spec)
    await _until_reachable(node, target)
    await _send_sessions(node, target, n, size, lambda mid, t: _emit("started", t, mid))
    print("done", flush=True)
    await node.close()


# -- the lab path -------------------------------------------------------------------------------


def _spawn_here(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


class _Proc:
    """A role process (in a lab host, or here) whose stdout lines a thread collects."""

    def __init__(self, spawn: Any, *args: str) -> None:
        self.proc = spawn(str(Path(__file__).resolve()), *args)
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.strip())
                self.cond.notify_all()

    def wait(self, predicate: Any, what: str, timeout: float = 300) -> list[str]:
        with self.cond:
            if not self.cond.wait_for(lambda: predicate(self.lines), timeout):
                err = self.proc.stderr.read() if self.proc.poll() is not None else ""
                raise RuntimeError(f"timed out waiting for {what}; stderr: {err}")
            return list(self.lines)

    def ready(self) -> str:
        lines = self.wait(lambda ls: any(x.startswith("ready") for x in ls), "ready", 60)
        return next(x for x in lines if x.startswith("ready")).split()[1]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(5)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def _stamps(lines: list[str], kind: str) -> dict[str, float]:
    out = {}
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[0] == kind:
            out[parts[2]] = float(parts[1])
    return out


def _count(kind: str, n: int) -> Any:
    return lambda lines: sum(1 for x in lines if x.startswith(kind + " ")) >= n


def _submit(
    make_socket: Any,
    user: str,
    to: str,
    ids: range,
    size: int,
    stamps: dict[str, float],
    after_each: Any = None,
) -> None:
    class NsSMTP(smtplib.SMTP):
        def _get_socket(self, h: str, p: int, timeout: float) -> socket.socket:
            sock: socket.socket = make_socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect((h, p))
            return sock

    # Rendered before the clock starts: the email package's generator is not what we time.
    body = _body(size)
    mails = [(f"<mta-{i}@bench.mesh>", _render(_message(user, to, i, body, "mta"))) for i in ids]
    with NsSMTP("127.0.0.1", SUBMISSION_PORT, local_hostname="localhost", timeout=60) as s:
        s.login(user, PASSWORD)
        for (mid, raw), i in zip(mails, ids, strict=True):
            stamps[mid] = time.monotonic()
            s.sendmail(user, [to], raw)
            if after_each is not None:
                after_each(i)


@dataclass
class _Side:
    """Where a node runs: how to start processes there, make sockets there, reach it."""

    spawn: Any
    make_socket: Any
    node_spec: str  # for the MTA node
    sink_spec: str  # for the bare-sink run's node


def _bench_processes(
    args: argparse.Namespace, a: _Side, b: _Side, scratch: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    dirs = {name: scratch / f"mail-{name}" for name in ("a", "b", "sa", "sb")}
    for d in dirs.values():
        d.mkdir()
    n = args.mails
    # bare sink
    sink = _Proc(b.spawn, "--role", "sink", str(dirs["sb"]), b.sink_spec)
    try:
        target = sink.ready()
        sender = _Proc(a.spawn, "--role", "sink-sender", str(dirs["sa"]), a.sink_spec, target,
                       str(n), str(args.size))  # fmt: skip
        try:
            arrived = _stamps(sink.wait(_count("arrived", n), "the sink"), "arrived")
            started = _stamps(sender.wait(lambda ls: "done" in ls, "the sender"), "started")
        finally:
            sender.stop()
    finally:
        sink.stop()
    bare = _summary("bare aiosmtpd sink (mesh SMTP only)", started, arrived)
    # meshsuite
    for name in ("a", "b"):
        set_password(dirs[name], PASSWORD)
    ports = {"a": SUBMISSION_PORT, "b": SUBMISSION_PORT + 1}
    node_b = _Proc(b.spawn, "--role", "node", str(dirs["b"]), b.node_spec, str(n), str(ports["b"]))
    node_a = _Proc(a.spawn, "--role", "node", str(dirs["a"]), a.node_spec, str(n), str(ports["a"]))
    try:
        b_addr, a_addr = node_b.ready(), node_a.ready()
        submitted: dict[str, float] = {}
        errors: list[BaseException] = []

        def client(k: int) -> None:
            try:
                _submit(a.make_socket, a_addr, b_addr, range(k, n, args.clients), args.size,
                        submitted)  # fmt: skip
            except BaseException as exc:
                errors.append(exc)

        clients = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
        for t in clients:
            t.start()
        for t in clients:
            t.join()
        if errors:
            raise RuntimeError(f"{len(errors)} submission client(s) failed: {errors[0]!r}")
        submit_end = time.monotonic()
        stored = _stamps(node_b.wait(_count("stored", n), "B to store every mail"), "stored")
        # Unloaded latency: one mail at a time, the next once B has stored the last.
        single: dict[str, float] = {}
        light = range(n, n + LIGHT_MAILS)
        _submit(a.make_socket, a_addr, b_addr, light, args.size, single,
                lambda i: node_b.wait(_count("stored", i + 1), "B to store it"))  # fmt: skip
        one_by_one = _stamps(node_b.lines, "stored")
    finally:
        node_a.stop()
        node_b.stop()
    mta = _summary("meshsuite (submit→queue→mesh→store)", submitted, stored)
    mta["submit_rate"] = n / (submit_end - min(submitted.values()))
    mta["single"] = _summary("", single, {k: v for k, v in one_by_one.items() if k in single})
    return mta, bare


def bench_lab(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], str]:
    from tests.lab.fixtures import two_host_lab

    labs = two_host_lab("msb")
    lab = next(labs)
    try:
        ha, hb = lab.hosts["a"], lab.hosts["b"]
        assert ha.daemon and hb.daemon
        a = _Side(ha.spawn, ha.socket, ha.daemon.admin, ha.daemon.admin)
        b = _Side(hb.spawn, hb.socket, hb.daemon.admin, hb.daemon.admin)
        mta, bare = _bench_processes(args, a, b, lab.dir)
        what = "lab: two namespaces, real yggdrasil 0.5.12 daemons, nodes A and B as processes"
        return mta, bare, what
    finally:
        with contextlib.suppress(StopIteration):
            next(labs)


def bench_embedded(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Two embedded nodes (Yggdrasil in Python) as processes, linked over loopback TCP."""
    with tempfile.TemporaryDirectory(prefix="bench-mail-") as tmp:
        link = [f"tcp://127.0.0.1:{_free_port()}" for _ in range(2)]
        a = _Side(_spawn_here, socket.socket, f"peer:{link[0]}", f"peer:{link[1]}")
        b = _Side(_spawn_here, socket.socket, f"listen:{link[0]}", f"listen:{link[1]}")
        mta, bare = _bench_processes(args, a, b, Path(tmp))
    what = "embedded: two in-Python Yggdrasil nodes as processes, one loopback TCP link"
    return mta, bare, what


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _print(mta: dict[str, Any], bare: dict[str, Any], what: str, args: argparse.Namespace) -> None:
    print(f"path: {what}")
    print(f"{args.mails} mails, {args.size}-byte bodies, {args.clients} submission clients\n")
    print(f"{'run':40} {'mails/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'mean ms':>9} {'total s':>8}")
    for r in (mta, bare):
        print(
            f"{r['name']:40} {r['rate']:9.1f} {r['p50']:9.1f} {r['p99']:9.1f} "
            f"{r['mean']:9.1f} {r['seconds']:8.2f}"
        )
    print(f"\nsubmission alone (AUTH, checks, queue commit): {mta['submit_rate']:.1f} mails/s")
    if "single" in mta:
        one = mta["single"]
        print(
            f"meshsuite unloaded, {one['mails']} mails one at a time: submit→stored "
            f"p50 {one['p50']:.1f} ms, p99 {one['p99']:.1f} ms"
        )
    if args.json:
        print(json.dumps({"path": what, "meshsuite": mta, "bare": bare}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mails", type=int, default=1000)
    parser.add_argument("--size", type=int, default=10 * 1024)
    parser.add_argument("--clients", type=int, default=4)
    default_path = "lab" if os.geteuid() == 0 else "embedded"
    parser.add_argument("--path", choices=["lab", "embedded"], default=default_path)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.role == "node" and os.environ.get("BENCH_PROFILE"):
        import cProfile

        out = f"{os.environ['BENCH_PROFILE']}.{Path(rest[0]).name}"
        cProfile.runctx(
            "asyncio.run(role_node(Path(rest[0]), rest[1], int(rest[2]), int(rest[3])))",
            globals(),
            locals(),
            out,
        )
    elif args.role == "node":
        asyncio.run(role_node(Path(rest[0]), rest[1], int(rest[2]), int(rest[3])))
    elif args.role == "sink":
        asyncio.run(role_sink(Path(rest[0]), rest[1]))
    elif args.role == "sink-sender":
        asyncio.run(role_sink_sender(Path(rest[0]), rest[1], rest[2], int(rest[3]), int(rest[4])))
    elif args.path == "lab":
        _print(*bench_lab(args), args)
    else:
        _print(*bench_embedded(args), args)


if __name__ == "__main__":
    main()
