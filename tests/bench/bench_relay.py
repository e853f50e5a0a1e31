"""Relay figures on the in-memory mesh (real embedded nodes, userspace TCP, real sealing
and relay.db with FULL sync): hand-off latency, fetch throughput, relay disk per item.

Run::

    .venv/bin/python tests/bench/bench_relay.py [--items 500] [--big 5] [--dir /tmp]

- hand-off latency: an outbox put (handoff_after = 0, the recipient offline) until the
  entry is removed because a relay committed it (the sender's seal, the submit, the
  relay's commit, the OK), one at a time; and ``RelayService.submit`` of a batch;
- fetch throughput: the recipient comes up with ``--items`` 1 KiB items and ``--big``
  10 MB items held; from its start until every item is handed to its app and deleted
  on the relay (messages/s, MB/s);
- relay disk: relay.db (+ WAL) growth per held 1 KiB item, next to its sealed size.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.relay.config import RelayConfig
from tests.core.relay_people import Crowd, until

CONFIG = RelayConfig(handoff_after=0.0001, fetch_interval=3600.0, io_timeout=120.0)
SMALL = 1024
BIG = 10 * 1000 * 1000


async def _checkpoint(r: object) -> None:
    """Fold the WAL into relay.db (what the file settles to; the WAL is reused)."""
    db = r.service.database  # type: ignore[attr-defined]
    async with db.lock:
        await db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _disk(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("relay.db*"))


async def run(base: Path, items: int, big: int) -> list[str]:
    lines = []
    async with Crowd(base) as crowd:
        a, b, r = await crowd.add(3, CONFIG)
        await a.node.contacts.add(b.key, "bob")
        await b.node.contacts.add(a.key, "alice")
        await r.service.allow(b.key)
        await b.service.use(r.key)

        async def a_knows() -> bool:
            return (await a.service.db.contact_relays(b.key)).get(b.key) == [r.key]

        await until(a_knows)
        await b.down()
        assert a.notes is not None

        # hand-off latency, one at a time
        waits = []
        for i in range(50):
            start = time.perf_counter()
            await a.send_note(b.key, os.urandom(SMALL), ref=f"lat{i}")
            while await a.notes.count():  # noqa: ASYNC110 - a bench: polls the outbox
                await asyncio.sleep(0.001)
            waits.append(time.perf_counter() - start)
        lines.append(
            f"hand-off latency, put -> committed at relay, one at a time (50 x 1 KiB): "
            f"median {statistics.median(waits) * 1000:.1f} ms, "
            f"p90 {statistics.quantiles(waits, n=10)[-1] * 1000:.1f} ms"
        )
        # submit batches straight through the kit
        await _checkpoint(r)
        base_disk = _disk(r.data_dir)
        held_before = sum(s.held for s in await r.service.db.serving())
        start = time.perf_counter()
        batch = [(f"s{i}", os.urandom(SMALL)) for i in range(items - 50)]
        for at in range(0, len(batch), 100):
            taken = await a.service.submit("note", b.key, batch[at : at + 100])
            assert taken is not None and not any(taken)
        took = time.perf_counter() - start
        lines.append(
            f"hand-off, RelayService.submit in batches of 100 ({len(batch)} x 1 KiB): "
            f"{len(batch) / took:.0f} items/s, {took / len(batch) * 1000:.2f} ms per item"
        )
        await _checkpoint(r)
        per_item = (_disk(r.data_dir) - base_disk) / len(batch)
        held = await r.service.db.serving()
        held_bytes = next(s.bytes for s in held if s.key == b.key)
        held_n = next(s.held for s in held if s.key == b.key) - held_before + held_before
        sealed = held_bytes / held_n
        lines.append(
            f"relay disk per held item (1 KiB body): {per_item:.0f} bytes of relay.db(+wal) "
            f"vs {sealed:.0f} bytes sealed ({per_item / sealed:.2f}x)"
        )
        big_start = time.perf_counter()
        for i in range(big):
            taken = await a.service.submit("note", b.key, [(f"big{i}", os.urandom(BIG))])
            assert taken == [None]
        if big:
            took = time.perf_counter() - big_start
            lines.append(
                f"hand-off of {big} x 10 MB: {big * BIG / took / 1e6:.1f} MB/s "
                f"({took / big:.2f} s each)"
            )
        await a.down()

        total = items + big
        start = time.perf_counter()
        await b.up()  # the relay service starts fetching as it starts
        up = time.perf_counter() - start
        await until(lambda: _have(b, total), 600)
        await until(lambda: _empty(r, b.key), 60)
        took = time.perf_counter() - start
        mb = (items * SMALL + big * BIG) / 1e6
        lines.append(
            f"fetch at start, {items} x 1 KiB + {big} x 10 MB, until all taken and deleted: "
            f"{total / took:.0f} messages/s, {mb / took:.1f} MB/s ({took:.2f} s, of which "
            f"{up:.2f} s until the node was up)"
        )
    return lines


async def _have(p: object, n: int) -> bool:
    return len(p.got) >= n  # type: ignore[attr-defined]


async def _empty(r: object, key: bytes) -> bool:
    return not any(s.key == key and s.held for s in await r.service.db.serving())  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--big", type=int, default=5)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-relay") as tmp:
        for line in asyncio.run(run(Path(tmp), max(args.items, 60), args.big)):
            print(line)


if __name__ == "__main__":
    main()
