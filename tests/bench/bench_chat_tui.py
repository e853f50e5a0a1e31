"""Chat TUI benchmark: a 100,000-message conversation opened and scrolled up.

Run: ``.venv/bin/python tests/bench/bench_chat_tui.py [--messages 100000] [--pages 120]
[--source node|scripted] [--pace 30]``

``--source node`` (default): a real ``mesh up`` node (embedded backend, no discovery) in
a child process whose chat store was filled beforehand with the conversation (through
the chat store's own schema and writer); ``--source scripted``: a child process serving
the scripted chat API (tests/chat/tui/scripted.py) on core's ControlServer, to see the
UI's share alone. Either way the UI process holds only what it loads; this process runs
the real ``ChatApp`` headless through ``ChatClient`` over the control socket and
measures:

- start → interactive: connect, mount, ``chat.info``/``chat.conversations``/the newest
  page of ``chat.history``, first frame drawn (target < 1 s);
- scrolling up one screen at a time (pageup): each step from the key until the whole
  screen is drawn again (target p95 < 50 ms), reported for all steps and for the steps
  that waited for a page or met one landing. ``--pace 30`` (default): the keys come as
  a held pageup repeats, 30 a second (never before the last screen was drawn), the
  next older page (``before_seq``, 100 messages per round trip) is fetched ahead
  meanwhile, a step waits for it only when the view reached the top of what is held,
  and a landing that holds the event loop when a key comes counts in that key's step.
  ``--pace 0``: steps back to back, each also waiting for any page fetch it started
  (round trip included), the app settling untimed in between;
- the stall when a fetched page lands (the event loop busy adding it to the view);
- the UI process's CPU time per step (p95), which machine load does not inflate the
  way it does wall time;
- the UI process's RSS with the conversation open after scrolling (target < 150 MB).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.chat.tui.scripted import ALICE, BOB, T0, ScriptedChat, message  # noqa: E402

METHODS = [
    "chat.info",
    "chat.conversations",
    "chat.history",
    "chat.read",
    "chat.security",
    "chat.search",
    "chat.send",
    "chat.typing",
    "contacts.list",
    "methods",
]


def build(count: int) -> ScriptedChat:
    chat = ScriptedChat()
    chat.contact(ALICE, "alice")
    chat.contact(BOB, "bob")
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "the",
        "lazy",
        "dog",
        "and",
        "keeps",
        "on",
        "running",
        "far",
    ]
    for seq in range(1, count + 1):
        body = " ".join(words[(seq + i) % len(words)] for i in range(4 + seq % 17))
        if seq % 250 == 0:
            body += " https://example.org/page/" + str(seq)
        chat.add(message(seq, ALICE, body, out=seq % 3 == 0, ts=T0 - (count - seq) * 30))
    chat.add(message(count + 1, BOB, "hello", ts=T0 - 10**6))
    return chat


async def serve(path: Path, count: int) -> None:
    from core.control.server import ControlServer
    from core.events import EventBus

    chat = build(count)
    server = ControlServer(path, EventBus())
    for name in METHODS:

        async def handler(params: dict[str, Any], name: str = name) -> Any:
            return await chat.call(name, **params)

        server.register(name, handler)
    await server.start()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.close()


async def fill_store(data_dir: Path, count: int, peer: bytes) -> None:
    """``count`` messages with ``peer`` in the node's chat store (before the node runs)."""
    import os
    import sqlite3

    from apps.chat.store import DB_FILE, ChatStore
    from core.identity import load_or_create_identity

    own = load_or_create_identity(data_dir)[0].public_key
    (data_dir / "chat").mkdir(mode=0o700, exist_ok=True)
    store = await ChatStore.open(data_dir / "chat" / DB_FILE)  # where the service keeps it
    chat = build(count)
    rows = []
    for m in chat.messages[ALICE][:count]:
        out = m["direction"] == "out"
        rows.append(
            (
                os.urandom(16),
                peer,
                m["direction"],
                own if out else peer,
                peer if out else own,
                m["body"],
                m["ts"],
                None if out else m["ts"] + 0.2,
                "read" if out else "seen",
                m["ts"],
            )
        )

    def write(conn: sqlite3.Connection) -> None:
        conn.executemany(
            "INSERT INTO messages (id, conversation, direction, sender, recipient, body, ts, "
            "received, state, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        last = conn.execute("SELECT MAX(seq) FROM messages").fetchone()[0]
        conn.execute(
            "INSERT INTO conversations (key, accepted, last_seq, last_activity) "
            "VALUES (?, 1, ?, ?)",
            (peer, last, rows[-1][6]),
        )

    await store.db.transaction(write)
    await store.close()


def start_node(data_dir: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "core.cli.main", "--data-dir", str(data_dir), "up"]
    with open(data_dir / "mesh-up.log", "wb") as log:
        return subprocess.Popen(
            [*command, "--backend", "embedded", "--no-multicast"],
            stdout=log,
            stderr=log,
            cwd=ROOT,
        )


async def wait_for_node(path: Path, timeout: float = 60) -> None:
    from apps.chat.tui.client import ChatClient

    end = time.monotonic() + timeout
    while True:
        try:
            client = await ChatClient.connect(path)
            await client.call("chat.info")
            await client.close()
            return
        except Exception:
            if time.monotonic() > end:
                raise
            await asyncio.sleep(0.2)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


async def measure(path: Path, pages: int, contact: str, pace: float) -> dict[str, Any]:
    from apps.chat.tui.app import ChatApp
    from apps.chat.tui.client import ChatClient
    from apps.chat.tui.widgets.message_log import MessageLog

    rss_before = rss_mb()
    t0 = time.perf_counter()
    client = await ChatClient.connect(path)
    round_trips: list[float] = []
    plain_call = client.call

    async def timed_call(method: str, **params: Any) -> Any:
        t = time.perf_counter()
        try:
            return await plain_call(method, **params)
        finally:
            if method == "chat.history":
                round_trips.append(time.perf_counter() - t)

    client.call = timed_call  # type: ignore[method-assign]
    app = ChatApp(client, contact=contact, freeze_gc=True)  # as `mesh chat` runs it
    async with app.run_test(size=(120, 40)) as pilot:
        await app.ready.wait()
        await pilot.pause()
        log = app.query_one(MessageLog)
        assert log.window.messages, "nothing loaded"
        start_s = time.perf_counter() - t0
        steps: list[float] = []
        loads: list[float] = []  # the steps that waited for a page or met one landing
        cpu_steps: list[float] = []  # this process's CPU time: what the UI itself costs
        cpu_loads: list[float] = []
        compositor = app.screen._compositor
        stalls: list[float] = []  # the loop blocked while a landed page is measured in
        landings: list[tuple[float, float]] = []  # (start, end) of each page landing
        add_older = log.add_older

        def timed_add_older(messages: list[Any], more: bool) -> None:
            t = time.perf_counter()
            add_older(messages, more)
            landings.append((t, time.perf_counter()))
            stalls.append(landings[-1][1] - t)

        log.add_older = timed_add_older  # type: ignore[method-assign]
        landed = asyncio.Event()
        plain_load = log._load

        async def tracked_load(*args: Any, **kwargs: Any) -> None:
            try:
                await plain_load(*args, **kwargs)
            finally:
                landed.set()

        log._load = tracked_load  # type: ignore[method-assign]

        async def page_landed() -> None:  # waits on the worker, not by spinning the loop
            while log._loading_older:
                landed.clear()
                await landed.wait()

        interval = 1 / pace if pace else 0.0
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        key_at = time.perf_counter()
        while len(landings) < pages:
            if pace:
                # The next pageup comes a key-repeat interval after the last one, or
                # once the last screen was drawn; meanwhile the fetch ahead runs. The
                # step counts from the key: a landing that holds the loop then, counts.
                key_at = max(key_at + interval, time.perf_counter())
                await asyncio.sleep(key_at - time.perf_counter())
                t = key_at
            else:
                t = time.perf_counter()
            cpu = time.process_time()
            log.action_page(-1)  # what pageup does
            if not pace or (log.scroll_y == 0 and log.window.older_cursor() is not None):
                # Back to back (--pace 0): every page load a step starts is waited for,
                # round trip included. Paced: only when the person reached the edge of
                # what is held and sees nothing new until the page lands.
                await page_landed()
            compositor.render_full_update()  # draw the whole screen
            done = time.perf_counter()
            steps.append(done - t)
            cpu_steps.append(time.process_time() - cpu)
            if any(end > t and begin < done for begin, end in landings[-2:]):
                loads.append(steps[-1])
                cpu_loads.append(cpu_steps[-1])
            if not pace:
                await pilot.pause()  # let the app settle (not timed)
            if log.window.older_cursor() is None and log.scroll_y == 0:
                break
        cpu_total = time.process_time() - cpu_start
        wall_total = time.perf_counter() - wall_start
        rss = rss_mb()
        held = len(log.window.messages)
        blocks = log.renders
    await client.close()

    def ms(values: list[float], q: float | None = None) -> float | None:
        if not values:
            return None
        value = statistics.median(values) if q is None else pct(values, q)
        return round(value * 1000, 2)

    return {
        "start_to_interactive_s": round(start_s, 3),
        "pace_keys_per_s": pace or "back to back",
        "scroll_steps": len(steps),
        "scroll_step_p50_ms": ms(steps),
        "scroll_step_p95_ms": ms(steps, 0.95),
        "page_loads": len(landings),
        "page_load_steps": len(loads),
        "page_load_step_p50_ms": ms(loads),
        "page_load_step_p95_ms": ms(loads, 0.95),
        "page_land_stall_p50_ms": ms(stalls),
        "page_land_stall_p95_ms": ms(stalls, 0.95),
        "ui_cpu_per_step_p95_ms": ms(cpu_steps, 0.95),
        "ui_cpu_per_page_load_p95_ms": ms(cpu_loads, 0.95),
        "ui_cpu_share_of_wall": round(cpu_total / wall_total, 2),
        "history_round_trip_p50_ms": ms(round_trips),
        "history_round_trip_p95_ms": ms(round_trips, 0.95),
        "messages_held": held,
        "blocks_rendered": blocks,
        "rss_mb": round(rss, 1),
        "rss_before_app_mb": round(rss_before, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--pages", type=int, default=120, help="older pages to scroll through")
    parser.add_argument("--source", choices=["node", "scripted"], default="node")
    parser.add_argument(
        "--pace",
        type=float,
        default=30.0,
        help="pageups a second, as a held key repeats (0: back to back, each step also "
        "waiting for any page fetch it started)",
    )
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.messages))
        return
    with tempfile.TemporaryDirectory(prefix="tu-bench-") as tmp:
        sock = Path(tmp) / "control.sock"
        t = time.perf_counter()
        if args.source == "node":
            asyncio.run(fill_store(Path(tmp), args.messages, bytes.fromhex(ALICE)))
            print(f"chat store with {args.messages} messages in {time.perf_counter() - t:.1f} s")
            node = start_node(Path(tmp))
            try:
                asyncio.run(wait_for_node(sock))
                result = asyncio.run(measure(sock, args.pages, ALICE, args.pace))
            finally:
                node.terminate()
                node.wait(timeout=20)
        else:
            child = subprocess.Popen(
                [sys.executable, __file__, "--serve", str(sock), "--messages", str(args.messages)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert child.stdout is not None
                if child.stdout.readline().strip() != "ready":
                    raise SystemExit("the chat API server did not start")
                print(f"scripted server with {args.messages} messages ready")
                result = asyncio.run(measure(sock, args.pages, "alice", args.pace))
            finally:
                if child.stdin is not None:
                    child.stdin.close()
                child.wait(timeout=10)
    print(f"source: {args.source}")
    targets = {
        "start_to_interactive_s": 1.0,
        "scroll_step_p95_ms": 50.0,
        "page_load_step_p95_ms": 50.0,
        "rss_mb": 150.0,
    }
    for key, value in result.items():
        target = targets.get(key)
        if target is None or value is None:
            verdict = ""
        else:
            verdict = "  ok" if value <= target else f"  OVER {target}"
        print(f"{key:26} {value}{verdict}")


if __name__ == "__main__":
    main()
