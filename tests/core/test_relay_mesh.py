"""Relays on an in-memory mesh: A and B are never up at once, R always is.

What A hands to R after ``handoff_after`` reaches B when B comes up, once, in order; R
holds nothing readable; strangers and floods are refused within quotas; a relay that was
dropped takes nothing new.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.relay.config import RelayConfig
from core.relay.sealing import item_id, seal
from core.relay.service import RelayError
from core.relay.wire import Answer, Code, Submit
from tests.core.relay_people import FAST, Crowd, Person, until

pytestmark = pytest.mark.timeout(180)


async def enrolled_pair(crowd: Crowd) -> tuple[Person, Person, Person]:
    """R allows A and B; A and B are each other's contacts and use R; both know it."""
    return await crowd.trio()


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


async def test_notes_reach_a_person_never_online_with_the_sender(tmp_path: Path) -> None:
    async with Crowd(tmp_path) as crowd:
        a, b, r = await enrolled_pair(crowd)
        await b.down()
        bodies = [f"note {i:03d} {os.urandom(8).hex()}".encode() for i in range(30)]
        for i, body in enumerate(bodies):
            await a.send_note(b.key, body, ref=f"n{i}")

        async def all_held() -> bool:
            return [s.held for s in await r.service.db.serving() if s.key == b.key] == [30]

        await until(all_held)
        assert a.notes is not None and await a.notes.count() == 0
        await a.down()
        for path in files_under(r.data_dir):  # R holds nothing readable
            data = path.read_bytes()
            assert not any(body in data for body in bodies), path

        await b.up()  # fetches at start: A is down
        await until(lambda: _const(len(b.got) == 30))
        assert [body for _, body in b.got] == bodies  # in order, each once
        assert {sender for sender, _ in b.got} == {a.key}
        await until(lambda: _held_for(r, b.key, 0))  # deleted once B committed them
        assert (await b.service.status())["using"][0]["last_fetch"] is not None


async def _const(value: bool) -> bool:
    return value


async def _held_for(r: Person, key: bytes, count: int) -> bool:
    return [s.held for s in await r.service.db.serving() if s.key == key] == [count]


async def test_a_relay_refuses_strangers_and_floods_within_quota(tmp_path: Path) -> None:
    small = RelayConfig(
        handoff_after=0.2,
        fetch_interval=3600.0,
        connect_timeout=3.0,
        recipient_max_items=30,
        submitter_max_items=10,
        submitter_max_bytes=1_000_000,
        max_item_bytes=200_000,
    )
    async with Crowd(tmp_path) as crowd:
        (b,) = await crowd.add(1)
        (r,) = await crowd.add(1, small)
        (stranger,) = await crowd.add(1)
        await r.service.allow(b.key)
        await b.service.use(r.key)
        await b.down()  # (up, it would fetch what the flood brings as it comes)
        ident = stranger.node.identity
        assert ident is not None

        async def submit(recipient: bytes, n: int, size: int = 100) -> list[Code]:
            codes = []
            async with stranger.service._connect(r.key) as stream:
                for i in range(n):
                    blob = seal(ident, recipient, "note", f"f{size}-{i}", os.urandom(size))
                    iid = item_id(ident.public_key, recipient, "note", f"f{size}-{i}")
                    await stream.send(Submit(recipient, iid, blob))
                    answer = await stream.receive()
                    assert isinstance(answer, Answer)
                    codes.append(answer.code)
            return codes

        # not enrolled here: refused for good
        assert set(await submit(stranger.key, 3)) == {Code.NOT_ENROLLED}
        # a flood for B: the stranger's own share runs out first
        codes = await submit(b.key, 40)
        assert codes[:10] == [Code.OK] * 10
        assert set(codes[10:]) == {Code.SUBMITTER_FULL}
        assert Code.SUBMITTER_FULL.temporary
        # too large for this relay: refused for good
        assert await submit(b.key, 1, size=300_000) == [Code.TOO_LARGE]
        held = {s.key: (s.held, s.bytes) for s in await r.service.db.serving()}
        assert held[b.key][0] == 10
        # enrolling without the owner's leave is refused
        with pytest.raises(RelayError, match="not-allowed"):
            await stranger.service.use(r.key)
        assert (await stranger.service.status())["using"][0]["state"] == "refused"


async def test_a_dropped_relay_holds_nothing_new(tmp_path: Path) -> None:
    async with Crowd(tmp_path) as crowd:
        a, b, r = await enrolled_pair(crowd)
        await b.service.drop(r.key)
        assert (await b.service.status())["using"] == []

        async def a_knows() -> bool:
            return (await a.service.db.contact_relays(b.key)).get(b.key) == []

        await until(a_knows)  # B told its contacts: no relay
        await b.down()
        await a.send_note(b.key, b"after the drop", ref="late")
        assert a.notes is not None
        await until(lambda: _attempted(a))
        assert await _held_for(r, b.key, 0) or b.key not in {
            s.key for s in await r.service.db.serving()
        }
        assert await r.service.db.is_enrolled(b.key) is False
        # even a sender who did not hear of the drop is refused by R
        ident = a.node.identity
        assert ident is not None
        async with a.service._connect(r.key) as stream:
            blob = seal(ident, b.key, "note", "x", b"sneaky")
            await stream.send(Submit(b.key, item_id(ident.public_key, b.key, "note", "x"), blob))
            answer = await stream.receive()
        assert isinstance(answer, Answer) and answer.code is Code.NOT_ENROLLED


async def _attempted(p: Person) -> bool:
    assert p.notes is not None
    pending = await p.notes.pending()
    return bool(pending) and pending[0].attempts >= 3


async def test_deny_keeps_what_is_held_until_fetched(tmp_path: Path) -> None:
    async with Crowd(tmp_path) as crowd:
        a, b, r = await enrolled_pair(crowd)
        await b.down()
        await a.send_note(b.key, b"held before deny", ref="d1")
        await until(lambda: _held_for(r, b.key, 1))
        await r.service.deny(b.key)
        assert not await r.service.db.is_enrolled(b.key)
        await b.up()
        await until(lambda: _const(len(b.got) == 1))
        assert b.got[0][1] == b"held before deny"


async def test_use_of_an_unreachable_relay_is_pending_and_says_so(tmp_path: Path) -> None:
    async with Crowd(tmp_path) as crowd:
        (a,) = await crowd.add(1, FAST)
        nobody = os.urandom(32)
        with pytest.raises(RelayError, match="cannot be reached"):
            await a.service.use(nobody)
        [using] = (await a.service.status())["using"]
        assert using == {"key": nobody.hex(), "alias": None, "state": "pending", "last_fetch": None}


async def test_only_trusted_contacts_hear_which_relays_we_use(tmp_path: Path) -> None:
    async with Crowd(tmp_path) as crowd:
        a, _, r = await enrolled_pair(crowd)
        (stranger,) = await crowd.add(1)
        await stranger.node.contacts.add(a.key, "alice")  # it would keep A's record
        await a.node.contacts.seen(stranger.key)  # it wrote to A: unknown there
        await r.service.allow(stranger.key)
        await stranger.service.use(r.key)
        assert a.service.records is not None
        await a.service.announce()

        async def all_sent() -> bool:
            assert a.service.records is not None
            return await a.service.records.count() == 0

        await until(all_sent)  # B was told (and the stranger would have been by now)
        assert await stranger.service.db.contact_relays(a.key) == {}
        await a.node.contacts.add(stranger.key, "accepted")  # trusted now: told at once

        async def stranger_heard() -> bool:
            return (await stranger.service.db.contact_relays(a.key)).get(a.key) == [r.key]

        await until(stranger_heard)


async def test_one_fetch_takes_everything_held_batch_after_batch(tmp_path: Path) -> None:
    async with Crowd(tmp_path) as crowd:
        a, b, r = await enrolled_pair(crowd)
        handler = b.service._inbound.pop("note")  # B's app is away: everything is kept
        items = [(f"b{i}", f"batch item {i}".encode()) for i in range(150)]
        assert await a.service.submit("note", b.key, items) == [None] * 150
        await until(lambda: _held_for(r, b.key, 150))

        async def idle() -> bool:
            lock = b.service._fetch_locks.get(r.key)
            return lock is None or not lock.locked()

        await until(idle)  # the fetches R's NOTIFYs started took nothing
        b.service._inbound["note"] = handler  # back, without waking a fetch
        assert await b.service.fetch(r.key) == 150  # 64 + 64 + 22, in one fetch
        assert [body for _, body in b.got] == [body for _, body in items]
        assert await _held_for(r, b.key, 0)
