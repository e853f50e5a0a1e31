"""Chat under a stranger's flood (issue 20): disk growth, RSS and a contact's delivery
latency while strangers send 16 KB texts at full speed, side by side with the limits of
the defaults and with the stranger limits lifted (as before issue 20).

Run::

    .venv/bin/python tests/bench/bench_chat_hostile.py [--seconds 20] [--strangers 4]

Real embedded chat nodes in this one process over core's in-memory carrier (a relay node,
B the target, A B's contact, and ``--strangers`` plain nodes writing raw chat frames, each
its own key and address). Each stranger pipelines signed 16 KB texts on one stream for
``--seconds`` (no waiting for acks). Meanwhile A sends B one message every 0.2 s and the
time to its ACK (stored at B) is measured. Figures: chat.db growth (file + WAL) against
the strangers' budget, this process's RSS against idle, the contact's latency p50/p99,
and what B stored and refused.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from apps.chat.connection import AckReceived, ChatConnection
from apps.chat.envelope import MAX_BODY, Envelope, Kind
from tests.chat.nodes import ChatNet, ChatNode


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _db_bytes(node: ChatNode) -> int:
    base = Path(node.node.config.data_dir) / "chat" / "chat.db"
    return sum(p.stat().st_size for p in (base, Path(f"{base}-wal")) if p.exists())


async def _flood(net: ChatNet, target: ChatNode, until: float, counts: dict[str, int]) -> None:
    node = await net.plain()
    identity = node.identity
    assert identity is not None
    reader, writer = await node.open_connection(target.node.address, 5310)
    conn = ChatConnection()
    body = b"x" * MAX_BODY

    async def acks() -> None:
        while chunk := await reader.read(65536):
            for event in conn.receive_data(chunk):
                if isinstance(event, AckReceived):
                    counts[f"ack {event.ack.code}"] = counts.get(f"ack {event.ack.code}", 0) + 1

    reading = asyncio.ensure_future(acks())
    try:
        n = 0
        while time.monotonic() < until and not reading.done():
            env = Envelope.build(
                Kind.TEXT, sender=identity.public_key, signer=identity.public_key,
                recipient=target.key, sent_ms=int(time.time() * 1000) + n, body=body,
                sign=identity.sign,
            )  # fmt: skip
            writer.write(conn.send_envelope(bytes(env), env.id))
            n += 1
            counts["sent"] = counts.get("sent", 0) + 1
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
        reading.cancel()


async def _run(seconds: float, strangers: int, lifted: bool) -> dict[str, float | str]:
    with tempfile.TemporaryDirectory() as tmp:
        async with ChatNet(Path(tmp)) as net:
            settings = {}
            if lifted:  # as before issue 20: no request quota, no budget, 2000/s
                settings = dict(
                    stranger_messages=10**9, stranger_bytes=10**12,
                    strangers_total_bytes=10**12, stranger_rate_burst=2000,
                    stranger_rate_per_minute=120_000, rate_burst=2000, rate_per_minute=120_000,
                )  # fmt: skip
            b = await net.start(**settings)
            a = await net.start()
            await net.befriend(a, b)
            for _ in range(5):  # warm the path
                await _latency(a, b)
            idle_rss, db_before = _rss_mb(), _db_bytes(b)
            counts: dict[str, int] = {}
            until = time.monotonic() + seconds
            floods = [
                asyncio.ensure_future(_flood(net, b, until, counts)) for _ in range(strangers)
            ]
            lat: list[float] = []
            peak = idle_rss
            while time.monotonic() < until:
                lat.append(await _latency(a, b))
                peak = max(peak, _rss_mb())
                await asyncio.sleep(0.2)
            await asyncio.gather(*floods, return_exceptions=True)
            peak = max(peak, _rss_mb())
            grown = _db_bytes(b) - db_before
            stored = await b.chat.db._all("SELECT COUNT(*) FROM messages WHERE direction='in'")
            q = statistics.quantiles(lat, n=100) if len(lat) > 1 else lat * 99
            return {
                "chat.db growth (MB)": grown / 1e6,
                "strangers' budget (MB)": b.chat.config.strangers_total_bytes / 1e6,
                "RSS over idle (MB)": peak - idle_rss,
                "contact ack p50 (ms)": statistics.median(lat),
                "contact ack p99 (ms)": q[98],
                "stranger texts sent": counts.get("sent", 0),
                "stored at B": int(stored[0][0]),
            }


async def _latency(a: ChatNode, b: ChatNode) -> float:
    start = time.perf_counter()
    sent = await a.call("chat.send", contact=b.key.hex(), body="still there?")
    while True:
        found = await a.chat.db.message(bytes.fromhex(sent["id"]))
        if found is not None and found["state"] in ("sent", "delivered", "read"):
            return (time.perf_counter() - start) * 1000
        if time.perf_counter() - start > 60:
            return 60_000.0
        await asyncio.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--strangers", type=int, default=4)
    args = parser.parse_args()
    runs = {
        "limits (defaults)": asyncio.run(_run(args.seconds, args.strangers, lifted=False)),
        "limits lifted": asyncio.run(_run(args.seconds, args.strangers, lifted=True)),
    }
    names = list(next(iter(runs.values())))
    print(f"{args.strangers} strangers flooding 16 KB texts for {args.seconds:g} s")
    print(f"{'figure':<26}" + "".join(f"{k:>20}" for k in runs))
    for name in names:
        cells = "".join(
            f"{v:>20.1f}" if isinstance(v, float) else f"{v!s:>20}"
            for v in (runs[k][name] for k in runs)
        )
        print(f"{name:<26}{cells}")


if __name__ == "__main__":
    main()
