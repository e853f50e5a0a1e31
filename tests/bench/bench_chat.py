"""Chat figures: delivery latency send -> committed at the peer (p50/p99), sustained
messages/s between two nodes with every message committed and receipted, and the store
(newest 200 of a 100,000-message conversation; full-text search over 1,000,000).

Run::

    .venv/bin/python tests/bench/bench_chat.py [--latency 300] [--burst 3000]
        [--conversation 100000] [--total 1000000] [--dir /tmp]

Two real embedded nodes joined by one loopback TCP link (one hop), run twice side by
side: in two processes (as deployed: each node has its own interpreter and event loop,
here on the machine's two cores; the peer reports the ``time.perf_counter()`` of each
commit, the same system-wide monotonic clock) and both in this one process (one event
loop does the work of both nodes: a worst case). The store figures use the chat store's
own schema and queries on a file in ``--dir``.
Targets (issue 10): p50 < 5 ms, p99 < 50 ms; >= 1,000 msg/s; < 50 ms; < 200 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TypeVar

from apps.chat.config import ChatConfig
from apps.chat.service import ChatService
from apps.chat.store import ChatStore
from core.config import NodeConfig
from core.identity import Identity
from core.node import Node

T = TypeVar("T")


async def _node(root: Path, name: str, peers: tuple[str, ...] = ()) -> tuple[Node, ChatService]:
    listen = () if peers else ("tcp://127.0.0.1:0",)
    node = await Node.open(
        NodeConfig(data_dir=root / name, backend="embedded", listen=listen, peers=peers),
        Identity.generate(),
    )
    # Throughput is measured, not the per-contact rate policy (defaults: 1000 at once,
    # 100/s): the burst would wait on rate-limit retries.
    config = ChatConfig(rate_burst=1_000_000, rate_per_minute=60_000_000)
    chat = ChatService(node, config, root / name)
    await chat.start()
    return node, chat


async def _listening(node: Node) -> str:
    return str((await node.status())["backend_status"]["listening"][0])


async def _reach(src: Node, dst: str) -> None:
    for _ in range(60):
        if (await src.ping(dst, count=1, timeout=1))[0] is not None:
            return
    raise SystemExit(f"no route to {dst}")


class Seen(dict[str, T]):
    """What the watchers saw, by message id; ``await seen.until(id, value)`` wakes on the
    watcher's write (no polling loop competing with the nodes for the CPU)."""

    def __init__(self) -> None:
        super().__init__()
        self._waiters: dict[str, tuple[T | None, asyncio.Future[None]]] = {}

    def __setitem__(self, key: str, value: T) -> None:
        super().__setitem__(key, value)
        waiting = self._waiters.get(key)
        if waiting is not None and waiting[0] in (None, value) and not waiting[1].done():
            waiting[1].set_result(None)

    async def until(self, key: str, value: T | None = None, timeout: float = 30) -> None:
        if key in self and value in (None, self[key]):
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters[key] = (value, future)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise SystemExit(f"message {key} not seen in {timeout:g} s") from None
        finally:
            del self._waiters[key]


async def _watch(node: Node, sink: dict[str, Any], kind: str, value: Any) -> None:
    async with node.events.subscribe((kind,)) as sub:
        async for event in sub:
            sink[event.data["id"]] = value(event.data)


async def _peer_process(root: Path, uri: str, friend: str) -> None:
    """The peer node of the two-process run: prints its key, then "id perf_counter" for
    each message it commits; ends when its stdin closes. It has accepted ``friend`` (A):
    receipts go to contacts only."""
    node, chat = await _node(root, "b", peers=(uri,))
    await chat.control_methods()["chat.accept"]({"contact": friend})
    loop = asyncio.get_running_loop()

    async def report() -> None:
        async with node.events.subscribe(("chat.message",)) as sub:
            async for event in sub:
                sys.stdout.write(f"{event.data['id']} {time.perf_counter()!r}\n")
                sys.stdout.flush()

    task = asyncio.ensure_future(report())
    print(f"key {node.key.hex()} {node.address}", flush=True)
    try:
        await loop.run_in_executor(None, sys.stdin.read)
    finally:
        task.cancel()
        await chat.close()
        await node.close()


async def _network(root: Path, latency_n: int, burst: int, *, two_processes: bool) -> None:
    a_node, a = await _node(root / ("2p" if two_processes else "1p"), "a")
    arrived: Seen[float] = Seen()
    states: Seen[str] = Seen()
    tasks = [asyncio.ensure_future(_watch(a_node, states, "chat.state", lambda d: d["state"]))]
    peer: asyncio.subprocess.Process | None = None
    b_node: Node | None = None
    b: ChatService | None = None
    try:
        if two_processes:
            peer = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--peer-of", await _listening(a_node),
                "--friend", a_node.key.hex(), "--dir", str(root / "2p"),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert peer.stdout is not None
            _, key_hex, address = (await peer.stdout.readline()).decode().split()
            tasks.append(asyncio.ensure_future(_read_arrivals(peer.stdout, arrived)))
        else:
            b_node, b = await _node(root / "1p", "b", peers=(await _listening(a_node),))
            await b.control_methods()["chat.accept"]({"contact": a_node.key.hex()})
            key_hex, address = b_node.key.hex(), str(b_node.address)
            tasks.append(
                asyncio.ensure_future(
                    _watch(b_node, arrived, "chat.message", lambda d: time.perf_counter())
                )
            )
        await _reach(a_node, address)
        await asyncio.sleep(0.1)
        where = "two processes" if two_processes else "one process "
        send = a.control_methods()["chat.send"]
        for _ in range(20):  # warm the stream and the path
            await _one(send, key_hex, arrived)
        # One at a time: each message sent once the previous one is settled (its receipt
        # is back at A), so nothing else is in flight: the latency of a message by itself.
        alone = []
        for _ in range(latency_n):
            alone.append(await _one(send, key_hex, arrived, settled=states))
        # Back to back: each sent as soon as the previous one is committed at the peer,
        # while that one's ack, receipt and bookkeeping are still under way.
        chained = [await _one(send, key_hex, arrived) for _ in range(latency_n)]
        for label, lat in (("one at a time", alone), ("back to back ", chained)):
            q = statistics.quantiles(lat, n=100)
            print(f"{where}: latency send -> committed at peer, {label} ({latency_n} msgs): "
                  f"p50 {statistics.median(lat):.2f} ms  p99 {q[98]:.2f} ms  "
                  f"max {max(lat):.2f} ms")  # fmt: skip

        start = time.perf_counter()
        sent = await asyncio.gather(
            *(send({"contact": key_hex, "body": f"burst {i}"}) for i in range(burst))
        )
        ids = [m["id"] for m in sent]
        persisted = time.perf_counter() - start
        while not all(states.get(i) == "delivered" for i in ids):
            await asyncio.sleep(0.005)
            if time.perf_counter() - start > 300:
                raise SystemExit("burst not delivered in 300 s")
        took = time.perf_counter() - start
        assert all(i in arrived for i in ids)
        print(f"{where}: sustained: {burst} msgs, all committed at B and receipted at A in "
              f"{took:.2f} s = {burst / took:.0f} msg/s "
              f"(persisted at A in {persisted:.2f} s)")  # fmt: skip
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if peer is not None:
            assert peer.stdin is not None
            peer.stdin.close()
            try:
                await asyncio.wait_for(peer.wait(), 10)
            except TimeoutError:
                peer.kill()
                await peer.wait()
        if b is not None and b_node is not None:
            await b.close()
            await b_node.close()
        await a.close()
        await a_node.close()


async def _read_arrivals(stream: asyncio.StreamReader, arrived: Seen[float]) -> None:
    while line := await stream.readline():
        id_, at = line.decode().split()
        arrived[id_] = float(at)


async def _one(
    send: Any, peer_hex: str, arrived: Seen[float], settled: Seen[str] | None = None
) -> float:
    """Send one message; ms until the peer committed it. With ``settled`` (A's states),
    return only once A has its receipt too (the message is "delivered")."""
    start = time.perf_counter()
    msg = await send({"contact": peer_hex, "body": "ping"})
    await arrived.until(msg["id"])
    if settled is not None:
        await settled.until(msg["id"], "delivered")
    return (arrived[msg["id"]] - start) * 1000


WORDS = [f"w{n:05d}" for n in range(20000)]


def _fill(path: Path, conversation: int, total: int) -> None:
    """``total`` messages, ``conversation`` of them in one conversation (the rest in 100
    others), 8 random words each plus a marker word in 1 of 10,000."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous=OFF")
    rng = random.Random(1)
    big = b"\x01" * 32
    others = [bytes([2 + i]) * 32 for i in range(100)]
    me = b"\xee" * 32
    batch: list[tuple[Any, ...]] = []
    now = time.time()
    for n in range(total):
        conv = big if n % (total // conversation) == 0 else rng.choice(others)
        words = rng.choices(WORDS, k=8)
        if n % 10000 == 0:
            words.append("needle")
        batch.append((os.urandom(16), conv, "in", conv, me, " ".join(words), now - total + n,
                      now, "read", None, now))  # fmt: skip
        if len(batch) == 20000:
            _insert(conn, batch)
            batch = []
    _insert(conn, batch)
    conn.execute(
        "INSERT INTO conversations (key, last_seq, last_activity) VALUES (?, "
        "(SELECT MAX(seq) FROM messages WHERE conversation = ?), ?)",
        (big, big, now),
    )
    conn.commit()
    conn.close()


def _insert(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    conn.executemany(
        "INSERT INTO messages (id, conversation, direction, sender, recipient, body, ts, "
        "received, state, reply_to, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    conn.commit()


async def _store(root: Path, conversation: int, total: int) -> None:
    path = root / "store" / "chat.db"
    store = await ChatStore.open(path)
    await store.close()
    start = time.perf_counter()
    await asyncio.to_thread(_fill, path, conversation, total)
    print(f"store: filled {total} messages ({conversation} in one conversation) "
          f"in {time.perf_counter() - start:.0f} s")  # fmt: skip
    store = await ChatStore.open(path)
    try:
        big = b"\x01" * 32
        timings = []
        for _ in range(20):
            t = time.perf_counter()
            page, more = await store.history(big, limit=200)
            timings.append((time.perf_counter() - t) * 1000)
        assert len(page) == 200 and more
        print(f"store: newest 200 of a {conversation}-message conversation: "
              f"median {statistics.median(timings):.2f} ms  max {max(timings):.2f} ms")  # fmt: skip
        t = time.perf_counter()
        await store.history(big, limit=200, before_seq=page[0]["seq"])
        print(f"store: the page before it: {(time.perf_counter() - t) * 1000:.2f} ms")
        for word, label in (("needle", "rare word"), (WORDS[7], "common word"),
                            (f"{WORDS[3]} {WORDS[9]}", "two words")):  # fmt: skip
            timings = []
            for _ in range(5):
                t = time.perf_counter()
                hits = await store.search(word, limit=50)
                timings.append((time.perf_counter() - t) * 1000)
            mid = statistics.median(timings)
            print(f"store: search over {total} ({label}, {len(hits)} hits shown): "
                  f"median {mid:.2f} ms  max {max(timings):.2f} ms")  # fmt: skip
        t = time.perf_counter()
        hits = await store.search(WORDS[7], conversation=big, limit=50)
        print(f"store: search in the big conversation: {(time.perf_counter() - t) * 1000:.2f} ms")
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--latency", type=int, default=300)
    parser.add_argument("--burst", type=int, default=3000)
    parser.add_argument("--conversation", type=int, default=100_000)
    parser.add_argument("--total", type=int, default=1_000_000)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--skip-store", action="store_true")
    parser.add_argument("--peer-of", help=argparse.SUPPRESS)  # the two-process run's peer
    parser.add_argument("--friend", help=argparse.SUPPRESS)  # ... and the key it accepts
    args = parser.parse_args()
    if args.peer_of:
        asyncio.run(_peer_process(Path(args.dir), args.peer_of, args.friend))
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        for two in (True, False):
            asyncio.run(_network(root, args.latency, args.burst, two_processes=two))
        if not args.skip_store:
            asyncio.run(_store(root, args.conversation, args.total))


if __name__ == "__main__":
    main()
