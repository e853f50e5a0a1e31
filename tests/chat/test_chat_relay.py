"""Chat through a relay: A and B are never up at the same time, R always is.

100 messages each way reach the other once and in order, the receipts come back the
same way (``relayed`` → ``delivered``), R's files hold none of the texts, a restart of R
in the middle of a hand-off loses and duplicates nothing, and what a relay hands over is
checked as strictly as a direct message (a copy already received is stored once; an
envelope re-sealed by someone else is refused).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from apps.chat.config import ChatConfig
from apps.chat.service import ChatService
from core.relay.service import RelayVerdict
from tests.core.relay_people import Crowd, Person, until

pytestmark = pytest.mark.timeout(300)

N = 100
CHAT = ChatConfig(retry_initial=0.2, retry_max=0.5, connect_timeout=2.0, ack_timeout=10.0)


class ChatPerson(Person):
    chat: ChatService | None = None

    async def up(self, *, ready: bool = True) -> None:
        await super().up(ready=ready)
        self.chat = ChatService(self.node, CHAT, self.data_dir)
        await self.chat.start()

    async def down(self) -> None:
        if self.chat is not None:
            await self.chat.close()
            self.chat = None
        await super().down()

    @property
    def c(self) -> ChatService:
        assert self.chat is not None, "down"
        return self.chat

    async def history(self, other: bytes) -> list[dict[str, Any]]:
        assert self.c.store is not None
        rows, _ = await self.c.store.history(other, limit=10 * N)
        return rows


async def chat_crowd(crowd: Crowd) -> tuple[ChatPerson, ChatPerson, ChatPerson]:
    return await crowd.trio(ChatPerson)


async def states(p: ChatPerson, other: bytes) -> list[str]:
    return [m["state"] for m in await p.history(other) if m["direction"] == "out"]


async def queued(p: ChatPerson) -> int:
    assert p.c.outbox is not None
    return await p.c.outbox.count()


def texts(n: int, who: str) -> list[str]:
    return [f"{who} {i:03d} {os.urandom(6).hex()}" for i in range(n)]


async def test_chat_each_way_through_a_relay_never_online_together(tmp_path: Path) -> None:
    async with Crowd(tmp_path) as crowd:
        a, b, r = await chat_crowd(crowd)
        await b.down()
        from_a = texts(N, "from alice")
        for text in from_a:
            await a.c.send(b.key, text, None)
        await until(lambda: _is(states(a, b.key), ["relayed"] * N), 60)
        await until(lambda: _eq(queued(a), 0))
        await a.down()

        await b.up()  # A is down: B fetches from R
        await until(lambda: _count_in(b, a.key, N), 60)
        got = [m for m in await b.history(a.key) if m["direction"] == "in"]
        assert [m["body"] for m in got] == from_a  # in order, each once
        from_b = texts(N, "from bob")
        for text in from_b:
            await b.c.send(a.key, text, None)
        await until(lambda: _eq(queued(b), 0), 60)  # B's texts and receipts: relayed
        await b.down()

        for path in (p for p in r.data_dir.rglob("*") if p.is_file()):
            data = path.read_bytes()
            for text in [*from_a, *from_b]:
                assert text.encode() not in data, (path, text)

        await a.up()
        await until(lambda: _count_in(a, b.key, N), 60)
        got = [m for m in await a.history(b.key) if m["direction"] == "in"]
        assert [m["body"] for m in got] == from_b
        await until(lambda: _is(states(a, b.key), ["delivered"] * N), 60)  # B's receipts
        await until(lambda: _eq(queued(a), 0), 60)  # A's receipts: relayed
        await a.down()

        await b.up()
        await until(lambda: _is(states(b, a.key), ["delivered"] * N), 60)
        assert [m["body"] for m in await b.history(a.key) if m["direction"] == "in"] == from_a
        held = {s.key: s.held for s in await r.service.db.serving()}
        assert held[a.key] == 0 and held[b.key] == 0


async def test_a_relay_restarted_mid_hand_off_loses_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    async with Crowd(tmp_path) as crowd:
        a, b, r = await chat_crowd(crowd)
        await b.down()
        sent = texts(60, "restart")
        for text in sent[:30]:
            await a.c.send(b.key, text, None)
        await until(lambda: _held_at_least(r, b.key, 1))
        await r.down()  # mid hand-off: some held, some still in A's outbox
        for text in sent[30:]:
            await a.c.send(b.key, text, None)
        await r.up()
        await until(lambda: _is(states(a, b.key), ["relayed"] * 60), 90)
        await a.down()
        await b.up()
        await until(lambda: _count_in(b, a.key, 60), 60)
        got = [m["body"] for m in await b.history(a.key) if m["direction"] == "in"]
        assert got == sent


async def test_relayed_envelopes_are_checked_as_strictly_as_direct_ones(tmp_path: Path) -> None:
    async with Crowd(tmp_path) as crowd:
        a, b, r = await chat_crowd(crowd)
        message = await a.c.send(b.key, "hello directly", None)
        await until(lambda: _count_in(b, a.key, 1))
        env = a.c._envelope_for(message, sent_ms=round(message["ts"] * 1000))
        # the same message again, through a relay: stored once
        assert await b.c._from_relay(a.key, bytes(env)) is RelayVerdict.ACCEPTED
        assert len([m for m in await b.history(a.key) if m["direction"] == "in"]) == 1
        # A's envelope sealed by R (R opened nothing; it re-signs the seal): forged sender
        assert await b.c._from_relay(r.key, bytes(env)) is RelayVerdict.REFUSED
        assert b.c.refused["forged-sender"] >= 1
        # garbage inside a valid seal
        assert await b.c._from_relay(a.key, b"\x01garbage") is RelayVerdict.REFUSED


async def _is(coro: Any, want: Any) -> bool:
    return bool(await coro == want)


async def _eq(coro: Any, want: int) -> bool:
    return bool(await coro == want)


async def _count_in(p: ChatPerson, other: bytes, n: int) -> bool:
    return len([m for m in await p.history(other) if m["direction"] == "in"]) >= n


async def _held_at_least(r: Person, key: bytes, n: int) -> bool:
    return any(s.key == key and s.held >= n for s in await r.service.db.serving())
