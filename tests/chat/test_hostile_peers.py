"""Issue 20: chat holds against hostile peers. Real embedded nodes on the in-memory
mesh; node C is an intruder writing raw chat frames (tests/chat/test_refusals.py).

- security-record floods from many claimed keys stay bounded (per source address, a
  total cap, paged replies) and can be acknowledged all at once (finding 2);
- a receipt from X moves only messages sent to X (finding 5);
- no receipt, delivered or read, goes to a stranger until accepted (finding 6).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from apps.chat.checks import Refusal
from apps.chat.envelope import Envelope, Kind, ids_body
from apps.chat.store import SECURITY_PER_SOURCE, SECURITY_TOTAL, ChatStore
from core import REPLY_BUDGET
from core.identity import Identity
from tests.chat.nodes import ChatNet, ChatNode, settle
from tests.chat.test_refusals import Intruder

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(180)]


async def _intruder(net: ChatNet, target: ChatNode) -> Intruder:
    node = await net.plain()
    assert node.identity is not None
    return Intruder(node, node.identity, target)


async def test_forged_sender_flood_from_fresh_claimed_keys_keeps_a_few_records(
    tmp_path: Path,
) -> None:
    async with ChatNet(tmp_path) as net:
        b = await net.start()
        c = await _intruder(net, b)
        for _ in range(60):  # each frame claims a fresh key: one source address
            claimed = Identity.generate()
            env = c.envelope(sender=claimed.public_key, signer=claimed, body=b"it is me")
            got, _ = await c.send(env)
            assert got is Refusal.FORGED_SENDER
        reply = await b.call("chat.security")
        assert reply["total"] <= 5, reply["total"]  # was 60: one per claimed key
        assert {r["source"] for r in reply["records"]} == {str(c.node.address)}
        assert b.chat.refused["security-records-dropped"] >= 55
        done = await b.call("chat.security.ack", all=True)
        assert done == {"acknowledged": reply["total"]}
        assert (await b.call("chat.security"))["unacknowledged"] == 0


async def test_security_records_are_capped_per_source_and_in_total_and_paged(
    tmp_path: Path,
) -> None:
    store = await ChatStore.open(tmp_path / "chat.db")
    try:
        key = bytes(32)
        for i in range(SECURITY_PER_SOURCE + 15):
            await store.add_security(key, "forged-sender", f"frame {i}", "200::1")
        page, more = await store.security(limit=1000)
        assert len(page) == SECURITY_PER_SOURCE and not more
        assert page[0]["detail"] == f"frame {SECURITY_PER_SOURCE + 14}"  # newest kept
        for i in range(SECURITY_TOTAL + 40):
            await store.add_security(key, "forged-sender", "x" * 200, f"200::{i + 2:x}")
        assert (await store.security_counts())[0] == SECURITY_TOTAL
        first, more = await store.security(limit=100)
        assert len(first) == 100 and more
        second, _ = await store.security(limit=100, before_id=int(first[-1]["id"]))
        assert int(second[0]["id"]) < int(first[-1]["id"])
        assert await store.ack_security(key=key) == SECURITY_TOTAL
        assert (await store.security_counts())[1] == 0
    finally:
        await store.close()


async def test_a_security_reply_stays_within_the_reply_budget(tmp_path: Path) -> None:
    async with ChatNet(tmp_path) as net:
        b = await net.start()
        for i in range(400):
            await b.chat.db.add_security(bytes(32), "key-changed", "d" * 2000, f"200::{i:x}")
        reply = await b.call("chat.security", limit=1000)
        size = len(str(reply).encode())
        assert reply["more"] and reply["next"] is not None
        assert size < REPLY_BUDGET + 8192, size


def _receipt(c: Intruder, kind: Kind, ids: list[bytes]) -> Envelope:
    return Envelope.build(
        kind,
        sender=c.identity.public_key,
        signer=c.identity.public_key,
        recipient=c.target.key,
        sent_ms=int(time.time() * 1000),
        body=ids_body(ids),
        sign=c.identity.sign,
    )


async def _state(node: ChatNode, message_id: str) -> str:
    found = await node.chat.db.message(bytes.fromhex(message_id))
    assert found is not None
    return str(found["state"])


async def test_a_receipt_moves_only_messages_sent_to_its_sender(tmp_path: Path) -> None:
    async with ChatNet(tmp_path) as net:
        a, b = await net.start(), await net.start()
        await b.call("chat.accept", contact=a.key.hex())  # B sends receipts to A
        sent = await a.call("chat.send", contact=b.key.hex(), body="for b only")
        await settle("delivered", lambda: a.seen("chat.state", lambda d: d["state"] == "delivered"))
        c = await _intruder(net, a)
        for kind in (Kind.READ, Kind.RECEIPT):
            got, _ = await c.send(_receipt(c, kind, [bytes.fromhex(sent["id"])]))
            assert got is Refusal.OK
        assert await _state(a, sent["id"]) == "delivered"  # was "read"
        pending = await a.call("chat.send", contact=b.key.hex(), body="second")
        got, _ = await c.send(_receipt(c, Kind.RECEIPT, [bytes.fromhex(pending["id"])]))
        assert await _state(a, pending["id"]) in ("pending", "sent", "delivered")
        assert not a.seen("chat.state", lambda d: d["id"] == sent["id"] and d["state"] == "read")


async def _receipts_to(node: ChatNode, peer: bytes) -> list[int]:
    assert node.chat.outbox is not None
    return [e.payload[1] for e in await node.chat.outbox.pending(peer)]


async def test_no_receipt_goes_to_a_stranger_until_accepted(tmp_path: Path) -> None:
    async with ChatNet(tmp_path) as net:
        b = await net.start()
        c = await _intruder(net, b)
        stranger = c.identity.public_key
        assert (await c.send(c.envelope(body=b"hello, we have not met")))[0] is Refusal.OK
        await settle("the request", lambda: b.seen("chat.request"))
        assert await b.call("chat.read", contact=stranger.hex()) == {"marked": 1}
        await settle("nothing queued", lambda: True)
        assert await _receipts_to(b, stranger) == []  # no delivered, no read receipt
        await b.call("chat.accept", contact=stranger.hex())
        assert (await c.send(c.envelope(body=b"thanks")))[0] is Refusal.OK
        await b.call("chat.read", contact=stranger.hex())

        async def both() -> bool:
            kinds = await _receipts_to(b, stranger)
            return Kind.RECEIPT in kinds and Kind.READ in kinds

        await settle_async("receipts once accepted", both)


async def settle_async(what: str, probe: object, timeout: float = 20.0) -> None:
    import asyncio

    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await probe():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: still not so after {timeout} s")


async def test_a_stranger_leaves_a_small_request_then_waits_to_be_accepted(
    tmp_path: Path,
) -> None:
    """Finding 4: until accepted, a stranger may leave ``stranger_messages`` messages
    (and ``stranger_bytes``); further ones get a temporary refusal (the sender's outbox
    retries), and get through once the person accepts."""
    async with ChatNet(tmp_path) as net:
        b = await net.start(stranger_messages=3, stranger_bytes=100_000)
        c = await _intruder(net, b)
        got = [(await c.send(c.envelope(body=f"knock {i}".encode())))[0] for i in range(5)]
        assert got == [Refusal.OK] * 3 + [Refusal.BUSY] * 2  # was: all stored
        assert Refusal.BUSY.temporary
        shown = await b.call("chat.history", contact=c.identity.public_key.hex())
        assert [m["body"] for m in shown["messages"]] == ["knock 0", "knock 1", "knock 2"]
        await b.call("chat.accept", contact=c.identity.public_key.hex())
        assert (await c.send(c.envelope(body=b"accepted now")))[0] is Refusal.OK


async def test_strangers_share_one_disk_budget_and_contacts_still_get_through(
    tmp_path: Path,
) -> None:
    async with ChatNet(tmp_path) as net:
        b = await net.start(strangers_total_bytes=2500)
        a = await net.start()
        await net.befriend(a, b)
        intruders = [await _intruder(net, b) for _ in range(3)]
        codes = [(await c.send(c.envelope(body=b"x" * 1000)))[0] for c in intruders]
        assert codes == [Refusal.OK, Refusal.OK, Refusal.BUSY]
        assert b.chat.stranger_bytes <= 2500
        sent = await a.call("chat.send", contact=b.key.hex(), body="a contact, unaffected")
        await settle(
            "the contact's message delivered",
            lambda: a.seen(
                "chat.state", lambda d: d["id"] == sent["id"] and d["state"] == "delivered"
            ),
        )


async def test_a_stranger_is_rate_limited_typing_frames_included(tmp_path: Path) -> None:
    async with ChatNet(tmp_path) as net:
        b = await net.start(stranger_rate_burst=3, stranger_rate_per_minute=1)
        c = await _intruder(net, b)
        typing = [
            Envelope.build(
                Kind.TYPING,
                sender=c.identity.public_key,
                signer=c.identity.public_key,
                recipient=b.key,
                sent_ms=int(time.time() * 1000) + i,
                body=b"\x01",
                sign=c.identity.sign,
            )
            for i in range(5)
        ]
        codes = [(await c.send(env))[0] for env in typing]
        assert codes == [Refusal.OK] * 3 + [Refusal.RATE_LIMITED] * 2


async def test_an_unsolicited_error_frame_ends_the_stream_at_once(tmp_path: Path) -> None:
    """Finding 11: it held the stream (and its slot) for idle_timeout, 300 s."""
    from apps.chat.wire import FrameType, WireError, encode_frame

    async with ChatNet(tmp_path) as net:
        b = await net.start()
        c = await _intruder(net, b)
        frame = encode_frame(FrameType.ERROR, bytes(WireError(int(Refusal.GARBAGE), "bye")))
        assert await c.send_raw(frame) == []  # closed by B: no TimeoutError after 10 s
