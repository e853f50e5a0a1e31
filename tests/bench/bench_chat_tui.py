"""Chat TUI benchmark: a 100,000-message conversation opened and scrolled up.

Run: ``.venv/bin/python tests/bench/bench_chat_tui.py [--messages 100000] [--pages 60]``

A child process serves the chat control API on a Unix socket (core's ControlServer with
the scripted chat API of tests/chat/tui/scripted.py holding the whole conversation, so
the UI process holds only what it loads); this process runs the real ``ChatApp``
headless through ``ChatClient`` over that socket and measures:

- start → interactive: connect, mount, ``chat.info``/``chat.conversations``/the newest
  page of ``chat.history``, first frame drawn (target < 1 s);
- scrolling up one screen at a time (pageup): each step until the whole screen is
  drawn again, including the keyset page loads (``before_seq``, 200 messages per
  round trip) on the way (target p95 < 50 ms), reported for all steps and for the
  steps that loaded a page;
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


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


async def measure(path: Path, pages: int) -> dict[str, Any]:
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
    app = ChatApp(client, contact="alice", freeze_gc=True)  # as `mesh chat` runs it
    async with app.run_test(size=(120, 40)) as pilot:
        await app.ready.wait()
        await pilot.pause()
        log = app.query_one(MessageLog)
        assert log.window.messages, "nothing loaded"
        start_s = time.perf_counter() - t0
        steps: list[float] = []
        loads: list[float] = []
        oldest = log.window.messages[0].seq
        compositor = app.screen._compositor
        while len(loads) < pages:
            t = time.perf_counter()
            log.action_page(-1)  # what pageup does
            while log._loading_older:  # noqa: ASYNC110 (the keyset page load, round trip included)
                await asyncio.sleep(0)
            compositor.render_full_update()  # draw the whole screen
            elapsed = time.perf_counter() - t
            steps.append(elapsed)
            if log.window.messages[0].seq != oldest:
                oldest = log.window.messages[0].seq
                loads.append(elapsed)
            await pilot.pause()  # let the app settle (not timed)
            if log.window.older_cursor() is None and log.scroll_y == 0:
                break
        rss = rss_mb()
        held = len(log.window.messages)
        blocks = log.renders
    await client.close()
    return {
        "start_to_interactive_s": round(start_s, 3),
        "scroll_steps": len(steps),
        "scroll_step_p50_ms": round(statistics.median(steps) * 1000, 2),
        "scroll_step_p95_ms": round(pct(steps, 0.95) * 1000, 2),
        "page_loads": len(loads),
        "page_load_step_p50_ms": round(statistics.median(loads) * 1000, 2) if loads else None,
        "page_load_step_p95_ms": round(pct(loads, 0.95) * 1000, 2) if loads else None,
        "history_round_trip_p50_ms": round(statistics.median(round_trips) * 1000, 2),
        "history_round_trip_p95_ms": round(pct(round_trips, 0.95) * 1000, 2),
        "messages_held": held,
        "blocks_rendered": blocks,
        "rss_mb": round(rss, 1),
        "rss_before_app_mb": round(rss_before, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--pages", type=int, default=60, help="older pages to scroll through")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.messages))
        return
    with tempfile.TemporaryDirectory(prefix="tu-bench-") as tmp:
        sock = Path(tmp) / "control.sock"
        t = time.perf_counter()
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
            print(f"server with {args.messages} messages ready in {time.perf_counter() - t:.1f} s")
            result = asyncio.run(measure(sock, args.pages))
        finally:
            if child.stdin is not None:
                child.stdin.close()
            child.wait(timeout=10)
    targets = {
        "start_to_interactive_s": 1.0,
        "scroll_step_p95_ms": 50.0,
        "page_load_step_p95_ms": 50.0,
        "rss_mb": 150.0,
    }
    for key, value in result.items():
        target = targets.get(key)
        verdict = "" if target is None else ("  ok" if value <= target else f"  OVER {target}")
        print(f"{key:26} {value}{verdict}")


if __name__ == "__main__":
    main()
