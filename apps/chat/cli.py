"""``mesh chat ...``: chat from scripts, through the running node's control API.

    mesh chat [CONTACT] [--start]                 the terminal UI
    mesh chat send CONTACT TEXT|- [--wait] [--timeout S] [--json]
    mesh chat history CONTACT [--json] [--limit N] [--search TEXT]
    mesh chat requests [--json] | accept CONTACT | search TEXT [--json] | read CONTACT
    mesh chat info [--json]                       this node's chat: key, port, refusals
    mesh chat security [--json] [--limit N]       security records, newest first
    mesh chat security ack ID|--all               acknowledge one record or all of them

Exit codes: 0 done; 1 failed (``send --wait``: the message failed or the wait timed out,
with the reason on stderr; or the node refused); 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from core import ControlClient, UsageError, json_safe, resolve_data_dir, safe_line, safe_text
from core.cli.names import Names

__all__ = ["HISTORY_FIELDS", "register"]

HISTORY_FIELDS = ("id", "direction", "from", "to", "body", "ts", "state")
MAX_PRINTED = 100_000  # --limit: messages or records printed (fetched page by page)
PAGE = 200  # asked for per control call (the node cuts a page to its byte budget too)
# send --wait is done once the recipient's node has stored the message (its ACK: "sent");
# delivered/read receipts come only from people who accepted us (none to a stranger).
DONE_STATES = ("sent", "delivered", "read")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "chat",
        help="chat over the mesh: the terminal UI, or send, history, requests, accept, search, ...",
        description=(
            "mesh chat [CONTACT] opens the terminal UI; mesh chat send|history|requests|"
            "accept|search|read|info act on the running node's chat. CONTACT is an alias, "
            "a 64-hex key, key@mesh or the start (8+ hex digits) of a key."
        ),
    )
    p.add_argument(
        "words",
        nargs="*",
        metavar="[send|history|requests|accept|search|read|info|security] ARGS",
        help="a subcommand and its arguments, or a CONTACT to open in the UI",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="history: at most N")
    p.add_argument("--search", metavar="TEXT", help="history: only messages matching TEXT")
    p.add_argument(
        "--wait", action="store_true", help="send: wait until the recipient's node stored it"
    )
    p.add_argument(
        "--timeout", type=float, default=60.0, metavar="S", help="send --wait: give up after S s"
    )
    p.add_argument("--start", action="store_true", help="UI: start a node if none runs")
    p.add_argument("--all", action="store_true", help="security ack: every record")
    p.set_defaults(func=cmd_chat)


def cmd_chat(args: argparse.Namespace) -> int:
    words = list(args.words)
    handler = COMMANDS.get(words[0]) if words else None
    if handler is None:
        if len(words) > 1:
            raise UsageError(f"unknown chat command {words[0]!r}: {', '.join(COMMANDS)}")
        from apps.chat.tui.app import main as tui_main  # the UI only when asked for

        args.contact = words[0] if words else None
        return tui_main(args)
    nargs, usage = USAGE[words[0]]
    if words[0] == "security":  # security | security ack ID | security ack --all
        acking = words[1:2] == ["ack"]
        ok = len(words) == 1 or (acking and len(words) == (2 if args.all else 3))
        if not ok or (args.all and not acking):
            raise UsageError(f"usage: mesh chat security {usage}")
    elif len(words) - 1 != nargs:  # before connecting: a usage error needs no node
        raise UsageError(f"usage: mesh chat {words[0]} {usage}")
    if args.timeout <= 0:
        raise UsageError("--timeout must be > 0 seconds")
    if args.limit is not None and not 1 <= args.limit <= MAX_PRINTED:
        raise UsageError(f"--limit must be from 1 to {MAX_PRINTED}")
    if words[0] == "send" and words[2] == "-":  # read before connecting: no node needed
        words[2] = _stdin_text()
    path = resolve_data_dir(args.data_dir) / "control.sock"
    code: int = asyncio.run(_with_client(path, lambda c: handler(c, words[1:], args)))
    return code


async def _with_client(path: Path, fn: Callable[[ControlClient], Awaitable[int]]) -> int:
    client = await ControlClient.connect(path)
    try:
        return await fn(client)
    finally:
        await client.close()


def _print_json(data: Any) -> None:
    sys.stdout.write(json_safe(json.dumps(data, indent=2, ensure_ascii=False)) + "\n")


def _stdin_text() -> str:
    """The message from stdin: UTF-8, CRLF as LF, one trailing newline dropped."""
    try:
        text = sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError("the message is not UTF-8 text") from None
    text = text.replace("\r\n", "\n")
    return text[:-1] if text.endswith("\n") else text


async def _send(client: ControlClient, words: list[str], args: argparse.Namespace) -> int:
    contact, text = words
    if not args.wait:
        message = await client.call("chat.send", contact=contact, body=text)
        print(json.dumps(message) if args.json else message["id"])
        return 0
    stream = client.subscribe(["chat.state"])
    await stream.start()
    message = await client.call("chat.send", contact=contact, body=text)
    print(json.dumps(message) if args.json else message["id"], flush=True)
    deadline = time.monotonic() + args.timeout
    try:
        async with asyncio.timeout(args.timeout):
            async for event in stream:
                data = event.get("data") or {}
                if event.get("event") == "events.lagged":
                    state = await _state(client, message)
                elif data.get("id") == message["id"]:
                    state = (str(data.get("state")), data.get("error"))
                else:
                    continue
                if state[0] in DONE_STATES:
                    return 0
                if state[0] == "failed":
                    why = safe_line(str(state[1]))  # the peer's words
                    print(f"mesh: message {message['id']} failed: {why}", file=sys.stderr)
                    return 1
    except TimeoutError:
        pass
    state = await _state(client, message)
    if state[0] in DONE_STATES:
        return 0
    waited = args.timeout - max(deadline - time.monotonic(), 0)
    print(
        f"mesh: message {message['id']} not delivered after {waited:.0f} s "
        f"(state {state[0]}); it stays queued",
        file=sys.stderr,
    )
    return 1


async def _state(client: ControlClient, message: dict[str, Any]) -> tuple[str, Any]:
    found = await client.call("chat.history", contact=message["conversation"], limit=200)
    for m in found["messages"]:
        if m["id"] == message["id"]:
            return str(m["state"]), m.get("error")
    return "unknown", None


async def _pages(
    client: ControlClient, method: str, wanted: int, **params: Any
) -> list[dict[str, Any]]:
    """Up to ``wanted`` messages, newest first, fetched page by page (keyset
    ``before_seq``): no reply grows with the conversation."""
    got: list[dict[str, Any]] = []
    before: int | None = None
    while len(got) < wanted:
        ask = dict(params, limit=min(PAGE, wanted - len(got)))
        if before is not None:
            ask["before_seq"] = before
        reply = await client.call(method, **ask)
        if isinstance(reply, dict):
            page, more = list(reversed(reply["messages"])), bool(reply["more"])
        else:
            page = list(reply)
            more = len(page) > 0
        got += page
        if not page or not more:
            break
        before = int(page[-1]["seq"])
    return got[:wanted]


async def _history(client: ControlClient, words: list[str], args: argparse.Namespace) -> int:
    (contact,) = words
    params: dict[str, Any] = {"contact": contact}
    if args.search:
        params["search"] = args.search
    newest_first = await _pages(client, "chat.history", args.limit or 200, **params)
    messages = list(reversed(newest_first))
    if args.json:
        _print_json([{**{f: m.get(f) for f in HISTORY_FIELDS}, **m} for m in messages])
        return 0
    info = await client.call("chat.info")
    names = await Names.fetch(client)
    for m in messages:
        who = "me" if m["from"] == info["key"] else safe_line(names.label(m["from"]))
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(m["ts"]))
        mark = f" [{safe_line(m['state'])}]" if m["direction"] == "out" else ""
        print(f"{when} {who}: {safe_text(m['body'])}{mark}")
    return 0


async def _requests(client: ControlClient, words: list[str], args: argparse.Namespace) -> int:
    found = await client.call("chat.requests")
    if args.json:
        _print_json(found)
    for r in [] if args.json else found:
        last = (r.get("last") or {}).get("body", "")
        print(f"{safe_line(r['key'])}@mesh  {r['unread']} unread  {safe_line(last[:60])}")
    return 0


async def _accept(client: ControlClient, words: list[str], args: argparse.Namespace) -> int:
    (contact,) = words
    result = await client.call("chat.accept", contact=contact)
    print(f"accepted {result['key']}@mesh")
    return 0


async def _search(client: ControlClient, words: list[str], args: argparse.Namespace) -> int:
    (text,) = words
    found = await _pages(client, "chat.search", args.limit or 50, text=text)
    if args.json:
        _print_json(found)
    names = Names() if args.json else await Names.fetch(client)
    for m in [] if args.json else found:
        who = safe_line(names.label(m["conversation"]))
        print(f"{who} {m['direction']}: {safe_text(m['body'])}")
    return 0


async def _info(client: ControlClient, words: list[str], args: argparse.Namespace) -> int:
    info = await client.call("chat.info")
    counts = sorted((info.get("refused") or {}).items())
    shown = (
        f"address  {info['address']}\n"
        f"port     {info['port']}  (signing with the {info['signing']})\n"
        f"refused  {', '.join(f'{name} {n}' for name, n in counts) or 'none'}"
        "  (since the node started)"
    )
    if args.json:
        _print_json(info)
    else:
        print(shown)
    return 0


async def _read(client: ControlClient, words: list[str], args: argparse.Namespace) -> int:
    (contact,) = words
    result = await client.call("chat.read", contact=contact)
    print(f"marked {result['marked']} read")
    return 0


async def _security(client: ControlClient, words: list[str], args: argparse.Namespace) -> int:
    if words[:1] == ["ack"]:
        params: dict[str, Any] = {"all": True} if args.all else {"id": words[1]}
        result = await client.call("chat.security.ack", **params)
        print(f"acknowledged {result.get('acknowledged', 0)} security record(s)")
        return 0
    wanted = args.limit or 100
    records: list[dict[str, Any]] = []
    reply: dict[str, Any] = {}
    before: str | None = None
    while len(records) < wanted:
        ask: dict[str, Any] = {"limit": min(PAGE, wanted - len(records))}
        if before is not None:
            ask["before_id"] = before
        reply = await client.call("chat.security", **ask)
        records += reply["records"]
        before = reply.get("next")
        if not reply["more"] or before is None:
            break
    if args.json:
        _print_json(records)
        return 0
    if not records:
        print("no security records")
        return 0
    names = await Names.fetch(client)
    for r in records:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["ts"]))
        state = "acknowledged" if r["acknowledged"] else "NEW"
        print(
            f"#{r['id']}  {when}  {state:<12}  {safe_line(r['kind'])}  "
            f"{safe_line(names.label(r['key']))}  from {safe_line(r.get('source') or '?')}"
        )
        print(f"    {safe_line(r['detail'])}")
    print(
        f"{reply.get('unacknowledged', 0)} unacknowledged of {reply.get('total', len(records))}"
        " kept; `mesh chat security ack --all` acknowledges them"
    )
    return 0


USAGE: dict[str, tuple[int, str]] = {
    "send": (2, "CONTACT TEXT|- [--wait] [--timeout S] [--json]"),
    "history": (1, "CONTACT [--json] [--limit N] [--search TEXT]"),
    "requests": (0, "[--json]"),
    "accept": (1, "CONTACT"),
    "search": (1, "TEXT [--json]"),
    "read": (1, "CONTACT"),
    "info": (0, "[--json]"),
    "security": (0, "[--json] [--limit N] | ack ID|--all"),
}
Command = Callable[[ControlClient, list[str], argparse.Namespace], Awaitable[int]]
COMMANDS: dict[str, Command] = {
    "send": _send,
    "history": _history,
    "requests": _requests,
    "accept": _accept,
    "search": _search,
    "read": _read,
    "info": _info,
    "security": _security,
}
