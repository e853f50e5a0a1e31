"""kill -9 of a process delivering from its outbox: nothing lost, nothing sent twice but
what was in flight at the kill (which the receiver de-duplicates by ``ref``), and an
entry acknowledged as delivered is never sent again.

The worker (this file run as a script) opens the outbox and delivers: each entry is
appended to a "wire" file and fsync'd — the remote end has it — before ``Delivered`` is
returned. The test SIGKILLs it mid-delivery, then drains the rest in its own process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest

from core import AppDatabase, Delivered, DeliveryResult, Outbox, OutboxEntry, RetryPolicy

ROOT = Path(__file__).resolve().parents[2]
ENTRIES = 100
DESTINATIONS = [bytes([i + 1]) * 32 for i in range(5)]
MAX_BATCH, CONCURRENCY = 4, 3
POLICY = RetryPolicy(initial=0.05, max_delay=0.1, jitter=0.0, expiry=3600)
MIGRATIONS = {1: ("CREATE TABLE app (x INTEGER)",)}


async def _open(path: Path) -> tuple[AppDatabase, Outbox]:
    db = await AppDatabase.open(path, MIGRATIONS, what="kill.db")
    outbox = await Outbox.open(
        db, name="kill", policy=POLICY, max_entries=1000, max_batch=MAX_BATCH,
        concurrency=CONCURRENCY,
    )  # fmt: skip
    return db, outbox


STALL_AT = 50  # the worker's deliveries stop (mid-batch, in flight) after this many


def _deliver_to(wire: Path, pause: float, stall_at: int | None = None):  # type: ignore[no-untyped-def]
    written = [0]

    async def deliver(dest: bytes, entries: list[OutboxEntry]) -> Sequence[DeliveryResult]:
        results: list[DeliveryResult] = []
        for entry in entries:
            await asyncio.sleep(pause)
            if stall_at is not None and written[0] >= stall_at:
                # Whatever the load on the test's side, the kill lands mid-delivery:
                # batches stay in flight with part of their entries on the wire.
                await asyncio.Event().wait()
            written[0] += 1
            fd = os.open(wire, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, f"{entry.ref} {dest[0]}\n".encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            results.append(Delivered())
        return results

    return deliver


async def _never_expires(entry: OutboxEntry) -> None:
    raise AssertionError(entry.ref)


async def _worker(path: Path, wire: Path) -> None:
    _db, outbox = await _open(path)
    outbox.start(None, deliver=_deliver_to(wire, 0.01, STALL_AT), expired=_never_expires)
    await asyncio.Event().wait()  # until killed


def _wire(wire: Path) -> list[str]:
    return wire.read_text().split("\n")[:-1] if wire.exists() else []


@pytest.mark.timeout(60)
async def test_kill_9_mid_delivery_loses_nothing_and_resends_only_what_was_in_flight(
    tmp_path: Path,
) -> None:
    path, wire = tmp_path / "kill.db", tmp_path / "wire"
    db, outbox = await _open(path)
    puts = [
        outbox.put(DESTINATIONS[i % len(DESTINATIONS)], b"payload %d" % i, ref=f"e{i:03d}")
        for i in range(ENTRIES)
    ]
    await asyncio.gather(*puts)
    await db.close()

    worker = await asyncio.create_subprocess_exec(
        sys.executable, __file__, str(path), str(wire), cwd=ROOT, stderr=subprocess.PIPE
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while len(_wire(wire)) < STALL_AT:
            assert worker.returncode is None, "the worker died"
            assert time.monotonic() < deadline, "the worker delivered too little"
            await asyncio.sleep(0.002)
        os.kill(worker.pid, signal.SIGKILL)
    finally:
        if worker.returncode is None:
            worker.kill()
        _, err = await worker.communicate()
    assert worker.returncode == -signal.SIGKILL, err.decode()
    before = _wire(wire)
    assert len(before) == STALL_AT  # killed mid-delivery

    db, outbox = await _open(path)
    try:
        left = {e.ref for e in await outbox.pending()}
        sent_before = {line.split()[0] for line in before}
        # Nothing lost: every entry was either sent or is still queued.
        assert sent_before | left == {f"e{i:03d}" for i in range(ENTRIES)}
        outbox.start(None, deliver=_deliver_to(wire, 0.0), expired=_never_expires)
        deadline = time.monotonic() + 20
        while await outbox.count():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
    finally:
        await outbox.close()
        await db.close()

    lines = _wire(wire)
    counts = Counter(line.split()[0] for line in lines)
    assert set(counts) == {f"e{i:03d}" for i in range(ENTRIES)}  # no loss
    twice = {ref for ref, n in counts.items() if n > 1}
    # Sent again only if it had reached the wire but its Delivered was not yet committed
    # at the kill: at most one batch per destination in flight.
    assert twice <= sent_before & left
    assert len(twice) <= MAX_BATCH * CONCURRENCY
    assert max(counts.values()) <= 2
    # The receiver keeps one copy per ref: exactly once end to end.
    assert len({line.split()[0]: line for line in lines}) == ENTRIES
    # FIFO per destination held across the crash, for the first copy of each entry.
    for dest in DESTINATIONS:
        firsts = list(dict.fromkeys(ln.split()[0] for ln in lines if ln.endswith(f" {dest[0]}")))
        assert firsts == sorted(firsts)
    print(f"kill -9 after {len(before)} sent: {len(left)} left, {len(twice)} resent")


if __name__ == "__main__":
    asyncio.run(_worker(Path(sys.argv[1]), Path(sys.argv[2])))
