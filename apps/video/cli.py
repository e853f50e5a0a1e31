"""``mesh call ...``: headless calls through the running node (a control API client;
the media runs in the node process).

    mesh call CONTACT [--source testsrc|FILE|DEVICE] [--audio-only] [--duration S]
                      [--record-to FILE] [--json]
    mesh call answer [--auto] [--source ...] [--record-to FILE] [--count N] [--json]
    mesh call reject | hangup | log [--json]
    mesh call mute | unmute | camera on|off [--json]   the call in progress
    mesh call page [CONTACT] [--new-token]   the call page's URL (with CONTACT: preset
                                      on them); its port and token stay across restarts
    mesh call CONTACT --page          open that URL in the default browser

Exit codes of ``mesh call CONTACT``: 0 answered (and ended normally), 3 rejected,
4 busy, 5 no answer, 6 not a contact at the callee, 1 failed (2: usage).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
import webbrowser
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from core import ControlClient, MeshError, UsageError, resolve_data_dir, safe_line, within
from core.cli.names import Names, or_dash, short_key
from core.cli.output import emit

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
RECORDING_FAILED = 7  # the call went on, but its recording could not be written whole
SUBCOMMANDS = ("answer", "reject", "hangup", "log", "page", "mute", "unmute", "camera")
RECORD_SUFFIXES = (".mkv", ".mp4", ".webm")  # apps/video/record.py FORMATS (not imported: av)
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
        help="audio/video calls over the mesh: call, answer, reject, hangup, log, page",
        description=(
            "mesh call CONTACT places a call; mesh call answer|reject|hangup|log|mute|unmute|"
            "camera on|off act on "
            "the running node's calls; mesh call page [CONTACT] prints the browser call "
            "page's URL (--page opens it). CONTACT is an alias, a 64-hex key or key@mesh."
        ),
        epilog=(
            "exit codes of mesh call CONTACT: 0 answered, 3 rejected, 4 busy, 5 no answer, "
            "6 not a contact at the callee, 1 failed, 2 usage. See docs/calls.md."
        ),
    )
    p.add_argument("contact", metavar="CONTACT|answer|reject|hangup|log|page|mute|unmute|camera")
    p.add_argument(
        "target",
        nargs="?",
        metavar="CONTACT",
        help="page: whom the page is preset on (a click calls); camera: on or off",
    )
    p.add_argument(
        "--new-token",
        action="store_true",
        help="page: replace the page's token (kept per data dir; old links stop working)",
    )
    p.add_argument(
        "--page",
        action="store_true",
        help="call from the browser call page: open it (camera and microphone of the browser)",
    )
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
    if args.target is not None and word not in ("page", "camera"):
        raise UsageError(f"mesh call {word} takes no second argument")
    if word == "camera" and args.target not in ("on", "off"):
        raise UsageError("mesh call camera takes on or off")
    if args.new_token and word != "page":
        raise UsageError("--new-token goes with mesh call page")
    if args.page and word in SUBCOMMANDS:
        raise UsageError("--page goes with mesh call CONTACT")
    if word != "answer" and (args.auto or args.count is not None):
        raise UsageError("--auto and --count go with mesh call answer")
    if word in SUBCOMMANDS and word != "answer" and args.record_to:
        raise UsageError(f"--record-to does not go with mesh call {word}")
    if args.record_to:  # what can be told here is told before anything rings
        _check_record_to(Path(args.record_to))
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
        "page": _page,
        "mute": _toggle,
        "unmute": _toggle,
        "camera": _toggle,
    }.get(args.contact, _open_page if args.page else _place)
    code: int = asyncio.run(handler(path, args))
    return code


class _Follower:
    """Follows one call by its events until its summary: says each state (without
    --json), hangs up after --duration once active, prints a stats line every few
    seconds. Falls back to ``call.status`` when the node says events were dropped."""

    def __init__(self, client: ControlClient, call_id: str, args: argparse.Namespace) -> None:
        self.client, self.call_id, self.args = client, call_id, args
        self.hangup_at: float | None = None
        self._armed = False
        self.next_stats = time.monotonic() + STATS_EVERY

    def _say(self, text: str) -> None:
        if not self.args.json:
            print(text, file=sys.stderr, flush=True)

    def _timeout(self) -> float:
        due = [self.next_stats] if not self.args.json else []
        if self.hangup_at is not None:
            due.append(self.hangup_at)
        return max(min(due) - time.monotonic(), 0.0) if due else 3600.0

    async def _tick(self) -> None:
        now = time.monotonic()
        if self.hangup_at is not None and now >= self.hangup_at:
            self.hangup_at = None
            with contextlib.suppress(UsageError):  # it may have ended meanwhile
                await self.client.call("call.hangup", id=self.call_id)
        if not self.args.json and now >= self.next_stats:
            self.next_stats = now + STATS_EVERY
            status = await self.client.call("call.status", id=self.call_id)
            if status.get("state") == "active":
                self._say(_stats_line(status.get("stats") or {}))

    async def _status(self) -> dict[str, Any] | None:
        """The summary if the call is over (asked when events were lost)."""
        status: dict[str, Any] = await self.client.call("call.status", id=self.call_id)
        if status.get("id") != self.call_id:
            return status  # long gone: idle
        if status.get("state") == "ended" and status.get("final", True):
            return status
        return None

    def _on_state(self, data: dict[str, Any]) -> None:
        state = data.get("state")
        if state == data.get("previous"):  # an update from the other side
            self._say(f"  the other side: {data.get('remote')}")
            return
        self._say(f"call {state}")
        if state == "active" and self.args.duration is not None and not self._armed:
            self._armed = True
            self.hangup_at = time.monotonic() + self.args.duration

    async def run(self, stream: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
        done = await self._status()  # it may have ended before we listened
        while done is None:
            try:
                event = await within(anext(stream), self._timeout())
            except TimeoutError:
                await self._tick()
                continue
            except StopAsyncIteration:
                raise MeshError("the node went away during the call") from None
            kind, data = event.get("event"), event.get("data") or {}
            if kind == "events.lagged":
                done = await self._status()
            elif data.get("id") != self.call_id:
                continue
            elif kind == "call.ended":
                done = data
            elif kind == "call.state":
                self._on_state(data)
        return done


# The stats line's parts: (field, how it is said); a field the node did not measure
# (None or absent: no media yet, an audio-only call's fps) is left out, never "None".
_STATS = (
    ("rtt_ms", "rtt {} ms"),
    ("loss", "loss {}"),
    ("bitrate_kbps", "{} kbit/s"),
    ("fps", "{} fps"),
    ("resolution", "{}"),
    ("jitter_ms", "jitter {} ms"),
)


def _stats_line(stats: dict[str, Any]) -> str:
    parts = [say.format(stats[k]) for k, say in _STATS if stats.get(k) not in (None, "")]
    return "  " + (", ".join(parts) if parts else "no media stats")


def _claimed(name: Any, key: Any) -> str | None:
    """What a peer says it is called, shown as its claim beside its key's start (names
    come only from our contacts: anyone can say they are "ana"); None without a name."""
    if not name:
        return None
    return f'{short_key(str(key)) if key else "?"} (says "{safe_line(str(name)[:64])}")'


def _who(call: dict[str, Any], names: Names) -> str:
    """Our alias for the call's peer (the node's contacts), else the alias the node noted
    on the call (from its contacts), else its key's prefix with the name it claimed."""
    peer = call.get("peer")
    return names.label(peer, call.get("alias") or _claimed(call.get("name"), peer))


def _summary_line(summary: dict[str, Any], names: Names) -> str:
    parts = [_who(summary, names)]
    if summary.get("duration_s") is not None:
        parts.append(f"{summary['duration_s']} s")
    if summary.get("setup_s") is not None:
        parts.append(f"setup {summary['setup_s']} s")
    video, audio = summary.get("video_frames_received"), summary.get("audio_frames_received")
    if video is not None or audio is not None:
        parts.append(f"{or_dash(video)} video / {or_dash(audio)} audio frames")
    detail = f" ({summary['detail']})" if summary.get("detail") else ""
    return f"call {or_dash(summary.get('result'))}: {', '.join(parts)}{detail}"


def _print_summary(summary: dict[str, Any], as_json: bool, names: Names | None = None) -> None:
    if as_json:
        print(json.dumps(summary_json(summary), default=str), flush=True)
        return
    line = _summary_line(summary, names or Names())
    print(line + "\n" + _stats_line(summary.get("stats") or {}), flush=True)
    recording = summary.get("recording")
    if recording:
        if recording.get("error"):
            print(f"recording FAILED ({recording.get('path')}): {recording['error']}", flush=True)
        else:
            print(f"  recorded to {recording.get('path')} ({recording.get('bytes')} bytes)")


async def _place(path: Path, args: argparse.Namespace) -> int:
    async with await ControlClient.connect(path) as client:
        stream = client.subscribe(["call."])
        await stream.start()  # before placing: no event of the call can be missed
        call = await client.call("call.place", contact=args.contact, **_media_params(args))
        follower = _Follower(client, call["id"], args)
        try:
            summary = await follower.run(stream)
        except (KeyboardInterrupt, asyncio.CancelledError):
            with contextlib.suppress(UsageError):
                await client.call("call.hangup", id=call["id"])
            summary = await follower.run(stream)
        names = Names() if args.json else await Names.fetch(client)
    _print_summary(summary, args.json, names)
    return _exit_code(summary)


def _exit_code(summary: dict[str, Any]) -> int:
    code = EXIT_CODES.get(str(summary.get("result")), 1)
    recording = summary.get("recording") or {}
    return RECORDING_FAILED if code == 0 and recording.get("error") else code


def _check_record_to(path: Path) -> None:
    if path.suffix.lower() not in RECORD_SUFFIXES:
        raise UsageError(f"--record-to must end in {', '.join(RECORD_SUFFIXES)}: {path.name}")
    if not path.resolve().parent.is_dir():
        raise UsageError(f"--record-to {path}: no such directory {path.resolve().parent}")


async def _ask(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    answer = await asyncio.to_thread(input, question)
    return answer.strip().lower() in ("y", "yes")


async def _answer(path: Path, args: argparse.Namespace) -> int:
    handled: set[str] = set()
    done = code = 0
    async with await ControlClient.connect(path) as client:
        names = Names() if args.json else await Names.fetch(client)
        stream = client.subscribe(["call."])
        await stream.start()
        ringing = await client.call("call.status")  # one may ring already
        while args.count is None or done < args.count:
            if ringing.get("state") != "ringing" or ringing.get("direction") != "incoming":
                event = await anext(stream, None)
                if event is None:
                    raise MeshError("the node went away")
                if event.get("event") == "call.incoming":
                    ringing = event.get("data") or {}
                continue
            call_id = str(ringing["id"])
            if call_id in handled:
                ringing = {}
                continue
            handled.add(call_id)
            if not args.json:
                who = _who(ringing, names)
                print(f"incoming call from {who} ({ringing['peer']})", file=sys.stderr)
            try:
                if args.auto or await _ask("answer? [y/N] "):
                    await client.call("call.answer", id=call_id, **_media_params(args))
                else:
                    await client.call("call.reject", id=call_id)
            except UsageError as exc:
                status = await client.call("call.status", id=call_id)
                if status.get("state") == "ringing":  # our own options: say so, leave it
                    raise  # ringing (the page or another mesh call answer may take it)
                print(f"mesh: {exc}", file=sys.stderr)  # the caller gave up meanwhile
            summary = await _Follower(client, call_id, args).run(stream)
            _print_summary(summary, args.json, names)
            code = max(code, _exit_code(summary) if summary.get("recording") else 0)
            done += 1
            ringing = {}
    return code


async def _simple(path: Path, args: argparse.Namespace) -> int:
    async with await ControlClient.connect(path) as client:
        result = await client.call(f"call.{args.contact}")
        names = Names() if args.json else await Names.fetch(client)
    if args.json:
        emit(result, as_json=True)
    else:
        with_whom = f" with {_who(result, names)}" if result.get("peer") else ""
        call_id = str(result.get("id") or "")[:8] or "-"
        print(f"{args.contact}: call {call_id}{with_whom} {or_dash(result.get('state'))}")
    return 0


async def _toggle(path: Path, args: argparse.Namespace) -> int:
    """Mute/unmute the microphone or turn the camera off/on in the call in progress
    (the page's buttons, from a terminal)."""
    if args.contact == "camera":
        params, said = {"video_off": args.target == "off"}, f"camera {args.target}"
    else:
        params, said = {"audio_muted": args.contact == "mute"}, f"{args.contact}d"
    async with await ControlClient.connect(path) as client:
        result = await client.call("call.update", **params)
        names = Names() if args.json else await Names.fetch(client)
    if args.json:
        emit(result, as_json=True)
    else:
        print(f"{said}: call {str(result.get('id'))[:8]} with {_who(result, names)}")
    return 0


async def _page_url(path: Path, contact: str | None, new_token: bool = False) -> str:
    async with await ControlClient.connect(path) as client:
        params: dict[str, Any] = {"contact": contact} if contact else {}
        if new_token:
            params["new_token"] = True
        found = await client.call("call.page", **params)
    return str(found["url"])


async def _page(path: Path, args: argparse.Namespace) -> int:
    """Print the call page's URL with its token (keep it to yourself: it is the key)."""
    url = await _page_url(path, args.target, args.new_token)
    if args.new_token and not args.json:
        print("a new token: open pages and old links no longer work", file=sys.stderr)
    if args.json:
        emit({"url": url}, as_json=True)
    else:
        print(url, flush=True)
    return 0


async def _open_page(path: Path, args: argparse.Namespace) -> int:
    """Open the page preset on CONTACT (the person presses Call) in the default browser,
    or print its URL."""
    url = await _page_url(path, args.contact)
    opened = await asyncio.to_thread(webbrowser.open, url)
    if not opened:
        print("no browser could be opened here: open this URL on this machine", file=sys.stderr)
        print(url, flush=True)
    elif not args.json:
        print("the call page is open in your browser", file=sys.stderr)
    return 0


async def _log(path: Path, args: argparse.Namespace) -> int:
    async with await ControlClient.connect(path) as client:
        rows = await client.call("call.log")
        names = Names() if args.json or not rows else await Names.fetch(client)
    if args.json:
        emit(rows, as_json=True)
        return 0
    if not rows:
        print("no calls yet")
    for row in rows:
        print(_log_line(row, names))
    return 0


def _log_line(row: dict[str, Any], names: Names) -> str:
    """One call of ``mesh call log``: when, direction, who (alias where we have one),
    outcome (result), duration; a dash for what the row lacks."""
    started = row.get("started")
    when = (
        time.strftime("%Y-%m-%d %H:%M", time.localtime(float(started)))
        if started is not None
        else "-".ljust(16)
    )
    arrow = "→" if row.get("direction") == "outgoing" else "←"
    who = names.label(row.get("peer"), _claimed(row.get("name"), row.get("peer")))
    outcome, result = or_dash(row.get("outcome")), or_dash(row.get("result"))
    said = result if result == outcome else f"{outcome} ({result})"
    duration = row.get("duration_s")
    length = f"{float(duration):8.1f} s" if duration is not None else f"{'-':>8} s"
    return f"{when} {arrow} {who:18} {said:24} {length}"
