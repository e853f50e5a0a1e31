"""Two (and three) real embedded nodes running the chat service: send, receive,
receipts, read, typing, requests, blocking, offline delivery, expiry."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from core.identity import Identity
from tests.chat.nodes import ChatNet, ChatNode, settle

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]


async def history(member: ChatNode, peer: ChatNode, **kw: Any) -> list[dict[str, Any]]:
    result = await member.call("chat.history", contact=peer.key.hex(), **kw)
    return list(result["messages"])


async def state_of(member: ChatNode, peer: ChatNode, mid: str) -> str:
    for m in await history(member, peer):
        if m["id"] == mid:
            return str(m["state"])
    return "absent"


async def test_message_arrives_signed_and_is_sent_then_delivered_then_read(
    tmp_path: Path,
) -> None:
    async with ChatNet(tmp_path) as net:
        a, b = await net.start(), await net.start()
        sent = await a.call("chat.send", contact=f"{b.key.hex()}@mesh", body="hello ✓")
        assert sent["state"] == "pending" and sent["direction"] == "out"

        async def arrived() -> list[dict[str, Any]]:
            return await history(b, a)

        got = (await settle("message at B", arrived))[0]
        assert (got["id"], got["body"], got["direction"], got["state"]) == (
            sent["id"], "hello ✓", "in", "received",
        )  # fmt: skip
        assert got["from"] == a.key.hex() and got["to"] == b.key.hex()
        await settle("sent at A", lambda: _is(a, b, sent["id"], "sent"))
        assert b.seen("chat.message", lambda d: d["id"] == sent["id"])
        assert b.seen("chat.request", lambda d: d["key"] == a.key.hex())
        assert [r["key"] for r in await b.call("chat.requests")] == [a.key.hex()]
        # a stranger's message: no receipt, delivered or read, until B accepts
        assert (await b.call("chat.read", contact=a.key.hex())) == {"marked": 1}
        assert b.chat.outbox is not None and await b.chat.outbox.pending(a.key) == []
        assert await state_of(a, b, sent["id"]) == "sent"
        await b.call("chat.accept", contact=a.key.hex())
        second = await a.call("chat.send", contact=b.key.hex(), body="and now?")
        await settle("delivered at A", lambda: _is(a, b, second["id"], "delivered"))
        assert a.seen("chat.state", lambda d: d["id"] == second["id"] and d["state"] == "sent")
        assert (await b.call("chat.read", contact=a.key.hex())) == {"marked": 1}
        await settle("read at A", lambda: _is(a, b, second["id"], "read"))
        assert (await b.call("chat.read", contact=a.key.hex())) == {"marked": 0}


async def _is(member: ChatNode, peer: ChatNode, mid: str, state: str) -> bool:
    return await state_of(member, peer, mid) == state


async def test_typing_is_an_event_never_stored(tmp_path: Path) -> None:
    async with ChatNet(tmp_path) as net:
        a, b = await net.start(), await net.start()
        await net.befriend(a, b)
        await a.call("chat.typing", contact=b.key.hex(), active=True)
        await settle(
            "typing at B",
            lambda: b.seen(
                "chat.typing", lambda d: d == {"conversation": a.key.hex(), "active": True}
            ),
        )
        assert await history(b, a) == []


async def test_order_kept_and_each_message_once_in_a_burst(tmp_path: Path) -> None:
    async with ChatNet(tmp_path) as net:
        a, b = await net.start(), await net.start()
        await net.befriend(a, b)
        ids = [
            (await a.call("chat.send", contact=b.key.hex(), body=f"m{i}"))["id"] for i in range(60)
        ]

        async def all_there() -> bool:
            return len(await history(b, a)) == 60

        await settle("60 messages at B", all_there)
        got = await history(b, a)
        assert [m["id"] for m in got] == ids and [m["body"] for m in got] == [
            f"m{i}" for i in range(60)
        ]

        async def all_delivered() -> bool:
            return all(m["state"] == "delivered" for m in await history(a, b))

        await settle("all delivered at A", all_delivered)


async def test_offline_peer_gets_everything_at_once_when_it_comes_back(tmp_path: Path) -> None:
    async with ChatNet(tmp_path) as net:
        a, b = await net.start(retry_initial=60.0), await net.start()
        await net.befriend(a, b)
        await net.stop(b)
        ids = [
            (await a.call("chat.send", contact=b.key.hex(), body=f"while away {i}"))["id"]
            for i in range(5)
        ]
        await asyncio.sleep(1.0)
        assert {m["state"] for m in await history(a, b)} == {"pending"}
        await net.resume(b)  # the first retry is 60 s away: only the wake-up can do it

        async def got_all() -> bool:
            return [m["id"] for m in await history(b, a)] == ids

        await settle("all 5 at B in order", got_all, timeout=30)

        async def all_delivered() -> bool:
            return all(m["state"] == "delivered" for m in await history(a, b))

        await settle("all delivered at A", all_delivered, timeout=30)


async def test_undelivered_message_fails_at_expiry_with_an_event(tmp_path: Path) -> None:
    async with ChatNet(tmp_path) as net:
        a = await net.start(expiry_days=2 / 86400, retry_initial=0.3, retry_max=0.5)
        nobody = Identity.generate().public_key
        sent = await a.call("chat.send", contact=nobody.hex(), body="into the void")

        def failed() -> bool:
            return a.seen("chat.state", lambda d: d["id"] == sent["id"] and d["state"] == "failed")

        await settle("failed event", failed, timeout=30)
        msg = (await a.call("chat.history", contact=nobody.hex()))["messages"][0]
        assert msg["state"] == "failed" and "not delivered within" in msg["error"]


async def test_blocked_sender_is_dropped_silently(tmp_path: Path) -> None:
    async with ChatNet(tmp_path) as net:
        a, b = await net.start(), await net.start()
        await net.befriend(a, b)
        await b.node.contacts.block(a.key)
        sent = await a.call("chat.send", contact=b.key.hex(), body="let me in")
        await settle("sent at A", lambda: _is(a, b, sent["id"], "sent"))
        await asyncio.sleep(0.5)
        assert await history(b, a) == [] and not b.seen("chat.message")
        assert await state_of(a, b, sent["id"]) == "sent"  # no receipt, no hint


async def test_search_finds_words_in_bodies(tmp_path: Path) -> None:
    async with ChatNet(tmp_path) as net:
        a, b = await net.start(), await net.start()
        await net.befriend(a, b)
        for body in ("the quick fox", "lazy dog", "quick thinking"):
            await a.call("chat.send", contact=b.key.hex(), body=body)
        found = await a.call("chat.search", text="quick")
        assert sorted(m["body"] for m in found) == ["quick thinking", "the quick fox"]
        assert await a.call("chat.search", text='"') == []


async def test_accepting_a_request_makes_the_sender_a_trusted_contact(tmp_path: Path) -> None:
    async with ChatNet(tmp_path) as net:
        a, b = await net.start(), await net.start()
        await a.call("chat.send", contact=b.key.hex(), body="may I?")
        await settle("request at B", lambda: b.seen("chat.request"))
        assert [r["key"] for r in await b.call("chat.requests")] == [a.key.hex()]
        contact = await b.node.contacts.get(a.key)
        assert contact is not None and contact.trust.value == "unknown"
        assert await b.call("chat.accept", contact=a.key.hex()) == {
            "key": a.key.hex(), "trust": "trusted",
        }  # fmt: skip
        assert await b.call("chat.requests") == []
        contact = await b.node.contacts.get(a.key)
        assert contact is not None and contact.trust.value == "trusted"
        await b.node.contacts.rename(a.key, "alice")
        sent = await b.call("chat.send", contact="alice", body="welcome")
        assert sent["to"] == a.key.hex()
        convs = await b.call("chat.conversations")
        assert [(c["key"], c["alias"], c["request"]) for c in convs] == [
            (a.key.hex(), "alice", False)
        ]


def _use_app_key(member: ChatNode) -> None:
    """What the service does on a node that cannot sign with its node key (attached to
    a daemon): sign with the app key kept in the chat data dir."""
    identity = member.node.identity
    member.node.identity = None
    try:
        member.chat.signer_key, member.chat._sign, member.chat.signing = member.chat._signing_key()
    finally:
        member.node.identity = identity


async def test_app_key_is_pinned_on_first_use_and_a_new_one_is_refused_loudly(
    tmp_path: Path,
) -> None:
    async with ChatNet(tmp_path) as net:
        a, b = await net.start(), await net.start()
        await net.befriend(a, b)
        _use_app_key(a)
        key_file = a.node.config.data_dir / "chat" / "app-key"
        assert a.chat.signing == "app key" and key_file.stat().st_mode & 0o777 == 0o600
        first = a.chat.signer_key
        _use_app_key(a)
        assert a.chat.signer_key == first  # persisted, not made again
        ok = await a.call("chat.send", contact=b.key.hex(), body="signed by my app key")
        await settle("delivered", lambda: _is(a, b, ok["id"], "delivered"))
        assert await b.chat.db.pinned(a.key) == first

        key_file.unlink()  # the app key is lost and made anew: the peer must refuse it
        _use_app_key(a)
        assert a.chat.signer_key != first
        bad = await a.call("chat.send", contact=b.key.hex(), body="new key")
        await settle("failed at A", lambda: _is(a, b, bad["id"], "failed"))
        failed = next(m for m in await history(a, b) if m["id"] == bad["id"])
        assert "key-changed" in failed["error"]
        records = (await b.call("chat.security"))["records"]
        assert [(r["kind"], r["key"]) for r in records] == [("key-changed", a.key.hex())]
        assert [m["body"] for m in await history(b, a)] == ["signed by my app key"]


async def test_a_stream_the_peer_closed_while_idle_is_replaced_at_once(tmp_path: Path) -> None:
    async with ChatNet(tmp_path) as net:
        a, b = await net.start(retry_initial=60.0), await net.start(idle_timeout=0.5)
        await net.befriend(a, b)
        first = await a.call("chat.send", contact=b.key.hex(), body="one")
        await settle("first delivered", lambda: _is(a, b, first["id"], "delivered"))
        await asyncio.sleep(1.5)  # B has closed the idle stream A keeps cached
        second = await a.call("chat.send", contact=b.key.hex(), body="two")
        # A retry would be 60 s away: only an immediate new stream makes this in time.
        await settle("second delivered", lambda: _is(a, b, second["id"], "delivered"), 10)


async def test_failed_message_is_retried_and_read_receipts_can_be_turned_off(
    tmp_path: Path,
) -> None:
    async with ChatNet(tmp_path) as net:
        a = await net.start(expiry_days=1 / 86400, retry_initial=0.2, retry_max=0.3)
        b = await net.start()
        await net.befriend(a, b)
        await net.stop(b)
        sent = await a.call("chat.send", contact=b.key.hex(), body="are you there?")
        await settle("failed at A", lambda: _is(a, b, sent["id"], "failed"), timeout=30)
        await net.resume(b)
        again = await a.call("chat.retry", id=sent["id"])
        assert again["id"] == sent["id"] and again["state"] in ("pending", "sent", "delivered")
        await settle("delivered after retry", lambda: _is(a, b, sent["id"], "delivered"))
        assert [m["id"] for m in await history(b, a)] == [sent["id"]]

        await b.call("chat.receipts", contact=a.key.hex(), read_receipts=False)
        assert await b.call("chat.read", contact=a.key.hex()) == {"marked": 1}
        await asyncio.sleep(1.0)
        assert await state_of(a, b, sent["id"]) == "delivered"  # no read receipt went out


async def test_flag_changes_are_events_for_every_attached_client(tmp_path: Path) -> None:
    # Another UI on the same node learns of a mute, a receipts switch, a read and an
    # accept without polling (they are not messages, so nothing else would tell it).
    async with ChatNet(tmp_path) as net:
        a, b = await net.start(), await net.start()
        await a.call("chat.send", contact=b.key.hex(), body="hello")
        await settle("the request at B", lambda: b.seen("chat.request", lambda d: True))
        key = a.key.hex()
        calls: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
            ("chat.mute", {"muted": True}, {"muted": True}),
            ("chat.receipts", {"read_receipts": False}, {"read_receipts": False}),
            ("chat.read", {}, {"unread": 0}),
            ("chat.accept", {}, {"accepted": True, "request": False, "trust": "trusted"}),
        ]
        for method, params, fields in calls:
            await b.call(method, contact=key, **params)
            want = {"key": key, **fields}

            def told(want: dict[str, Any] = want) -> bool:
                return bool(b.seen("chat.conversation", lambda d: d == want))

            await settle(f"{method} event", told)
        conv = next(c for c in await b.call("chat.conversations") if c["key"] == key)
        assert conv["muted"] and not conv["read_receipts"] and conv["unread"] == 0
