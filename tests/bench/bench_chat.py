"""Chat figures: delivery latency send -> committed at the peer (p50/p99), sustained
messages/s between two nodes with every message committed and receipted, and the store
(newest 200 of a 100,000-message conversation; full-text search over 1,000,000).

Run::

    .venv/bin/python tests/bench/bench_chat.py [--latency 300] [--burst 3000]
        [--conversation 100000] [--total 1000000] [--dir /tmp]

Two real embedded nodes in this process joined by one loopback TCP link (one hop); the
store figures use the chat store's own schema and queries on a file in ``--dir``.
Targets (issue 10): p50 < 5 ms, p99 < 50 ms; >= 1,000 msg/s; < 50 ms; < 200 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from apps.chat.config import ChatConfig
from apps.chat.service import ChatService
from apps.chat.store import ChatStore
from core.config import NodeConfig
from core.identity import Identity
from core.node import Node


async def _pair(root: Path) -> tuple[Node, ChatService, Node, ChatService]:
    a_node = await Node.open(
        NodeConfig(data_dir=root / "a", backend="embedded", listen=("tcp://127.0.0.1:0",)),
        Identity.generate(),
    )
    uri = (await a_node.status())["backend_status"]["listening"][0]
    b_node = await Node.open(
        NodeConfig(data_dir=root / "b", backend="embedded", peers=(uri,)), Identity.generate()
    )
    for src, dst in ((a_node, b_node), (b_node, a_node)):
        for _ in range(60):
            if (await src.ping(str(dst.address), count=1, timeout=1))[0] is not None:
                break
    a = ChatService(a_node, ChatConfig(), root / "a")
    b = ChatService(b_node, ChatConfig(), root / "b")
    await a.start()
    await b.start()
    return a_node, a, b_node, b


async def _network(root: Path, latency_n: int, burst: int) -> None:
    a_node, a, b_node, b = await _pair(root)
    try:
        arrived: dict[str, float] = {}
        states: dict[str, str] = {}

        async def watch(node: Node, sink: dict[str, Any], kind: str, value: Any) -> None:
            async with node.events.subscribe((kind,)) as sub:
                async for event in sub:
                    sink[event.data["id"]] = value(event.data)

        watchers = [
            asyncio.ensure_future(
                watch(b_node, arrived, "chat.message", lambda d: time.perf_counter())
            ),
            asyncio.ensure_future(watch(a_node, states, "chat.state", lambda d: d["state"])),
        ]
        await asyncio.sleep(0.1)
        send = a.control_methods()["chat.send"]
        for _ in range(20):  # warm the stream and the path
            await _one(send, b_node, arrived)
        lat = [await _one(send, b_node, arrived) for _ in range(latency_n)]
        q = statistics.quantiles(lat, n=100)
        p50, p99 = statistics.median(lat), q[98]
        print(f"latency send -> committed at peer ({latency_n} msgs, one at a time): "
              f"p50 {p50:.2f} ms  p99 {p99:.2f} ms  max {max(lat):.2f} ms")  # fmt: skip

        start = time.perf_counter()
        sent = await asyncio.gather(
            *(send({"contact": b_node.key.hex(), "body": f"burst {i}"}) for i in range(burst))
        )
        ids = [m["id"] for m in sent]
        persisted = time.perf_counter() - start
        while not all(states.get(i) == "delivered" for i in ids):
            await asyncio.sleep(0.005)
            if time.perf_counter() - start > 300:
                raise SystemExit("burst not delivered in 300 s")
        took = time.perf_counter() - start
        assert all(i in arrived for i in ids)
        print(f"sustained: {burst} msgs, all committed at B and receipted at A in {took:.2f} s "
              f"= {burst / took:.0f} msg/s (persisted at A in {persisted:.2f} s)")  # fmt: skip
        for w in watchers:
            w.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
    finally:
        await a.close()
        await b.close()
        await a_node.close()
        await b_node.close()


async def _one(send: Any, peer: Node, arrived: dict[str, float]) -> float:
    start = time.perf_counter()
    msg = await send({"contact": peer.key.hex(), "body": "ping"})
    for _ in range(1_000_000):  # the watcher records the arrival on its next turn
        if msg["id"] in arrived:
            break
        await asyncio.sleep(0)
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        asyncio.run(_network(root, args.latency, args.burst))
        if not args.skip_store:
            asyncio.run(_store(root, args.conversation, args.total))


if __name__ == "__main__":
    main()
