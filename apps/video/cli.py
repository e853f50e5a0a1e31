"""``mesh call ...``: headless calls through the running node (a control API client;
the media runs in the node process).

    mesh call CONTACT [--source testsrc|FILE|DEVICE] [--audio-only] [--duration S]
                      [--record-to FILE] [--json]
    mesh call answer [--auto] [--source ...] [--record-to FILE] [--count N] [--json]
    mesh call reject | hangup | log [--json]

Exit codes of ``mesh call CONTACT``: 0 answered (and ended normally), 3 rejected,
4 busy, 5 no answer, 6 not a contact at the callee, 1 failed (2: usage).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from core import UsageError
from core.cli.output import emit
from core.control.client import ControlClient
from core.datadir import resolve_data_dir

__all__ = ["EXIT_CODES", "register", "summary_json"]

EXIT_CODES = {
    "answered": 0,
    "rejected": 3,
    "busy": 4,
    "no-answer": 5,
    "not-a-contact": 6,
    "failed": 1,
    "missed": 5,
}
SUBCOMMANDS = ("answer", "reject", "hangup", "log")
RESERVED = ("page",)  # the browser call page (calls part 2)
POLL = 0.1
STATS_EVERY = 5.0
JSON_FIELDS = (
    "result",
    "setup_s",
    "duration_s",
    "video_frames_received",
    "audio_frames_received",
    "local_candidates",
    "remote_candidates",
    "stats",
)


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "call",
        help="audio/video calls over the mesh: call, answer, reject, hangup, log",
        description=(
            "mesh call CONTACT places a call; mesh call answer|reject|hangup|log act on "
            "the running node's calls. CONTACT is an alias, a 64-hex key or key@mesh."
        ),
    )
    p.add_argument("contact", metavar="CONTACT|answer|reject|hangup|log")
    p.add_argument(
        "--source",
        default="testsrc",
        help="testsrc (pattern + tone), a media FILE, or a DEVICE (/dev/video0, "
        "alsa:hw:0, pulse:default, avfoundation:0:0, camera)",
    )
    p.add_argument("--audio-only", action="store_true", help="no video")
    p.add_argument("--duration", type=float, metavar="S", help="hang up S s after connecting")
    p.add_argument("--record-to", metavar="FILE", help="record what is received (.mkv/.mp4/.webm)")
    p.add_argument("--auto", action="store_true", help="answer: without asking")
    p.add_argument("--count", type=int, metavar="N", help="answer: stop after N calls")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_call)


def summary_json(summary: dict[str, Any]) -> dict[str, Any]:
    """The ``--json`` object: the contract fields first, then the rest."""
    out = {name: summary.get(name) for name in JSON_FIELDS}
    if out["result"] == "missed":
        out["result"] = "no-answer"
    for key, value in summary.items():
        out.setdefault(key, value)
    return out


def _check_flags(args: argparse.Namespace) -> None:
    word = args.contact
    if word in RESERVED:
        raise UsageError("mesh call page is not available yet (the call page is part 2)")
    if word != "answer" and (args.auto or args.count is not None):
        raise UsageError("--auto and --count go with mesh call answer")
    if word in SUBCOMMANDS and word != "answer" and args.record_to:
        raise UsageError(f"--record-to does not go with mesh call {word}")
    if word in SUBCOMMANDS and args.duration is not None:
        raise UsageError("--duration goes with mesh call CONTACT")
    if args.duration is not None and args.duration <= 0:
        raise UsageError("--duration must be > 0 seconds")
    if args.count is not None and args.count < 1:
        raise UsageError("--count must be at least 1")


def _media_params(args: argparse.Namespace) -> dict[str, Any]:
    source = args.source
    device = source.startswith(("testsrc", "/dev/", "alsa:", "pulse:", "avfoundation:"))
    if not device and Path(source).exists():  # the node has its own cwd: absolute paths
        source = str(Path(source).resolve())
    params: dict[str, Any] = {"source": source, "audio_only": args.audio_only}
    if args.record_to:
        params["record_to"] = str(Path(args.record_to).resolve())
    return params


def cmd_call(args: argparse.Namespace) -> int:
    _check_flags(args)
    path = resolve_data_dir(args.data_dir) / "control.sock"
    handler = {
        "answer": _answer,
        "reject": _simple,
        "hangup": _simple,
        "log": _log,
    }.get(args.contact, _place)
    code: int = asyncio.run(handler(path, args))
    return code


async def _wait_end(client: ControlClient, call_id: str, args: argparse.Namespace) -> Any:
    """Poll the call until it ends (hanging up after --duration once active); without
    --json, say each state and a stats line every few seconds."""
    active_since: float | None = None
    last_state = ""
    next_stats = time.monotonic() + STATS_EVERY
    hung_up = False
    while True:
        show = not args.json and time.monotonic() >= next_stats
        status = await client.call("call.status", id=call_id, stats=show)
        state = status.get("state", "")
        if state != last_state and not args.json:
            print(f"call {state}", file=sys.stderr)
        last_state = state
        if status.get("id") != call_id or (state == "ended" and status.get("final", True)):
            return status  # the summary (or the call is long gone: idle)
        if show:
            next_stats = time.monotonic() + STATS_EVERY
            if state == "active":
                print(_stats_line(status.get("stats") or {}), file=sys.stderr)
        if state == "active" and active_since is None:
            active_since = time.monotonic()
        if (
            not hung_up
            and args.duration is not None
            and active_since is not None
            and time.monotonic() - active_since >= args.duration
        ):
            hung_up = True
            await client.call("call.hangup", id=call_id)
        await asyncio.sleep(POLL)


def _stats_line(stats: dict[str, Any]) -> str:
    return (
        f"  rtt {stats.get('rtt_ms')} ms, loss {stats.get('loss')}, "
        f"{stats.get('bitrate_kbps')} kbit/s, {stats.get('fps')} fps, "
        f"{stats.get('resolution')}, jitter {stats.get('jitter_ms')} ms"
    )


def _print_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary_json(summary), default=str), flush=True)
        return
    print(
        f"call {summary.get('result')}: {summary.get('duration_s')} s, "
        f"setup {summary.get('setup_s')} s, "
        f"{summary.get('video_frames_received')} video / "
        f"{summary.get('audio_frames_received')} audio frames"
        + (f" ({summary['detail']})" if summary.get("detail") else "")
        + "\n"
        + _stats_line(summary.get("stats") or {}),
        flush=True,
    )


async def _place(path: Path, args: argparse.Namespace) -> int:
    async with await ControlClient.connect(path) as client:
        call = await client.call("call.place", contact=args.contact, **_media_params(args))
        try:
            summary = await _wait_end(client, call["id"], args)
        except (KeyboardInterrupt, asyncio.CancelledError):
            await client.call("call.hangup", id=call["id"])
            summary = await _wait_end(client, call["id"], args)
    _print_summary(summary, args.json)
    return EXIT_CODES.get(str(summary.get("result")), 1)


async def _ask(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    answer = await asyncio.to_thread(input, question)
    return answer.strip().lower() in ("y", "yes")


async def _answer(path: Path, args: argparse.Namespace) -> int:
    handled: set[str] = set()
    done = 0
    async with await ControlClient.connect(path) as client:
        while args.count is None or done < args.count:
            status = await client.call("call.status")
            call_id = status.get("id")
            ringing = status.get("state") == "ringing" and status.get("direction") == "incoming"
            if not ringing or call_id in handled:
                await asyncio.sleep(POLL)
                continue
            handled.add(call_id)
            who = status.get("name") or status["peer"][:16] + "…"
            if not args.json:
                print(f"incoming call from {who} ({status['peer']})", file=sys.stderr)
            if args.auto or await _ask("answer? [y/N] "):
                await client.call("call.answer", id=call_id, **_media_params(args))
            else:
                await client.call("call.reject", id=call_id)
            _print_summary(await _wait_end(client, call_id, args), args.json)
            done += 1
    return 0


async def _simple(path: Path, args: argparse.Namespace) -> int:
    async with await ControlClient.connect(path) as client:
        result = await client.call(f"call.{args.contact}")
    if args.json:
        emit(result, as_json=True)
    else:
        print(f"{args.contact}: call {result.get('id', '')[:8]} {result.get('state')}")
    return 0


async def _log(path: Path, args: argparse.Namespace) -> int:
    async with await ControlClient.connect(path) as client:
        rows = await client.call("call.log")
    if args.json:
        emit(rows, as_json=True)
        return 0
    if not rows:
        print("no calls yet")
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["started"]))
        arrow = "→" if row["direction"] == "outgoing" else "←"
        who = row["name"] or row["peer"][:16] + "…"
        result = (
            row["result"]
            if row["result"] == row["outcome"]
            else (f"{row['outcome']} ({row['result']})")
        )
        print(f"{when} {arrow} {who:18} {result:24} {row['duration_s']:8.1f} s")
    return 0
