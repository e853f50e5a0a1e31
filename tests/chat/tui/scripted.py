"""A node's chat control API held in memory, with fixed keys and clocks.

Used where the test is about what the UI *draws* from given data (snapshots, the
paging benchmark's figures for the UI alone, widget behaviour with a message in each
delivery state). Everything that is about the UI *working with a node* runs against
real embedded nodes instead (test_pilot_nodes.py). It follows the contract in
/work/coord/KIT.md "Chat control API" field for field.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import AsyncIterator
from typing import Any

from core.errors import MeshError, UsageError

OWN = "a1" * 32
ALICE = "b2" * 32
BOB = "c3" * 32
MALLORY = "d4" * 32
HANG_UP = "__hang_up__"
T0 = 1_764_750_000.0  # 2025-12-03 08:20 UTC


def message(
    seq: int,
    conv: str,
    body: str,
    *,
    out: bool = False,
    state: str | None = None,
    ts: float | None = None,
    reply_to: str | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    return {
        "id": f"{seq:032x}",
        "conversation": conv,
        "direction": "out" if out else "in",
        "from": OWN if out else conv,
        "to": conv if out else OWN,
        "body": body,
        "ts": T0 + seq * 60 if ts is None else ts,
        "received": None,
        "state": state or ("delivered" if out else "received"),
        "reply_to": reply_to,
        "seq": seq,
        "error": error,
    }


class ScriptedChat:
    """Answers chat.*, contacts.*, methods like a node would; events are pushed."""

    max_body_bytes = 4000
    send_delay = 0.0  # s chat.send takes (a node under load)

    def __init__(self) -> None:
        self.messages: dict[str, list[dict[str, Any]]] = {}
        self.contacts: dict[str, dict[str, Any]] = {}
        self.requests: set[str] = set()
        self.unread: dict[str, int] = {}
        self.online: set[str] = set()
        self.muted: set[str] = set()
        self.security: list[dict[str, Any]] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.methods = ["chat.info", "chat.send", "chat.history", "contacts.list", "methods"]
        self._queue: asyncio.Queue[dict[str, Any]] | None = None
        self._seq = 10_000_000

    # -- building the scene
    def contact(self, key: str, alias: str | None, *, request: bool = False) -> None:
        self.contacts[key] = {
            "key": key,
            "alias": alias,
            "trust": "unknown" if request else "trusted",
        }
        self.messages.setdefault(key, [])
        if request:
            self.requests.add(key)

    def add(self, msg: dict[str, Any]) -> None:
        self.messages.setdefault(msg["conversation"], []).append(msg)

    def push(self, kind: str, data: Any) -> None:
        if self._queue is None:
            self._queue = asyncio.Queue()
        self._queue.put_nowait({"event": kind, "data": data})

    # -- the backend protocol
    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        if self._queue is None:
            self._queue = asyncio.Queue()
        return self._events(self._queue)

    async def _events(self, queue: asyncio.Queue[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        while True:
            event = await queue.get()
            if event.get("event") == HANG_UP:
                raise MeshError("the node closed the control connection")
            yield event

    def hang_up(self) -> None:
        """The node went away (its event stream ends)."""
        self.push(HANG_UP, None)

    async def close(self) -> None:
        pass

    def _conv(self, key: str) -> dict[str, Any]:
        msgs = self.messages.get(key, [])
        c = self.contacts.get(key, {"alias": None, "trust": "unknown"})
        return {
            "key": key,
            "alias": c["alias"],
            "trust": c["trust"],
            "unread": self.unread.get(key, 0),
            "online": key in self.online,
            "request": key in self.requests,
            "last": msgs[-1] if msgs else None,
            "muted": key in self.muted,
        }

    def _key(self, params: dict[str, Any]) -> str:
        name = str(params["contact"]).removesuffix("@mesh")
        for key, c in self.contacts.items():
            if name in (key, c["alias"]):
                return key
        if len(name) == 64:
            return name
        raise UsageError(f"unknown contact {name!r}")

    async def call(self, method: str, **params: Any) -> Any:
        self.calls.append((method, params))
        if method == "chat.info":
            return {
                "key": OWN,
                "address": f"{OWN}@mesh",
                "node_address": "200:1111:2222:3333:4444:5555:6666:7777",
                "max_body_bytes": self.max_body_bytes,
                "port": 5312,
            }
        if method == "methods":
            return self.methods
        if method == "chat.security":
            wanted = [r for r in self.security if not r.get("acknowledged")]
            shown = wanted if params.get("unacknowledged") else self.security
            return {"records": shown, "more": False, "next": None, "total": len(self.security),
                    "unacknowledged": len(wanted)}  # fmt: skip
        if method == "chat.conversations":
            convs = [self._conv(k) for k in self.messages]
            return sorted(convs, key=lambda c: -(c["last"]["ts"] if c["last"] else 0))
        if method == "chat.history":
            msgs = self.messages.get(self._key(params), [])
            before = params.get("before_seq")
            if before is not None:
                end = bisect.bisect_left(msgs, before, key=lambda m: m["seq"])
            else:
                end = len(msgs)
            limit = int(params.get("limit", 200))
            start = max(end - limit, 0)
            return {"messages": msgs[start:end], "more": start > 0}
        if method == "chat.read":
            key = self._key(params)
            n, self.unread[key] = self.unread.get(key, 0), 0
            return {"marked": n}
        if method == "chat.search":
            text = str(params["text"]).lower()
            keys = [self._key(params)] if params.get("contact") else list(self.messages)
            hits = [m for k in keys for m in self.messages.get(k, []) if text in m["body"].lower()]
            return hits[-int(params.get("limit", 50)) :]
        if method == "chat.send":
            await asyncio.sleep(self.send_delay)
            key = self._key(params)
            self._seq += 1
            msg = message(self._seq, key, str(params["body"]), out=True, state="pending")
            msg["reply_to"] = params.get("reply_to")
            self.add(msg)
            return msg
        if method in ("chat.typing", "chat.mute", "chat.receipts", "chat.security.ack"):
            return {}
        if method in ("chat.accept", "chat.ignore"):
            key = self._key(params)
            self.requests.discard(key)
            return {"key": key, "trust": "trusted" if method == "chat.accept" else "unknown"}
        if method in ("contacts.block", "contacts.unblock"):
            key = self._key(params)
            self.requests.discard(key)
            self.contacts.setdefault(key, {"key": key, "alias": None, "trust": "unknown"})
            self.contacts[key]["trust"] = "blocked" if method == "contacts.block" else "unknown"
            return self.contacts[key]
        if method == "contacts.list":
            return list(self.contacts.values())
        if method == "contacts.add":
            self.contact(str(params["key"]), params.get("alias"))
            return self.contacts[str(params["key"])]
        raise MeshError(f"no method {method!r}")


def scene() -> ScriptedChat:
    """Three conversations and a request; one conversation with every delivery mark."""
    chat = ScriptedChat()
    chat.contact(ALICE, "alice")
    chat.contact(BOB, "bob")
    chat.contact(MALLORY, None, request=True)
    chat.online.add(ALICE)
    day1 = T0 - 86400
    chat.add(message(1, BOB, "are we still on for friday?", ts=day1))
    chat.add(message(2, ALICE, "hi! here is the map: https://example.org/map?x=1", ts=day1 + 60))
    chat.add(message(3, ALICE, "sure, on my way", out=True, state="read", ts=day1 + 120))
    chat.add(message(4, ALICE, "first line\nsecond line of the same message", ts=T0))
    chat.add(message(5, ALICE, "this one was read", out=True, state="read", ts=T0 + 60))
    chat.add(message(6, ALICE, "this one was delivered", out=True, state="delivered", ts=T0 + 120))
    chat.add(message(7, ALICE, "this one was sent", out=True, state="sent", ts=T0 + 180))
    chat.add(
        message(
            8,
            ALICE,
            "this one failed",
            out=True,
            state="failed",
            ts=T0 + 240,
            error="expired after 30 days",
        )
    )
    chat.add(message(9, ALICE, "replying to the map", reply_to=f"{2:032x}", ts=T0 + 300))
    chat.add(message(10, ALICE, "this one is pending", out=True, state="pending", ts=T0 + 360))
    chat.add(message(11, MALLORY, "hello, we have not met", ts=T0 + 30))
    chat.unread[BOB] = 1
    chat.unread[MALLORY] = 1
    return chat
