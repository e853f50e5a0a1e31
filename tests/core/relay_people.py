"""People on an in-memory mesh, each with the relay service as the node process runs it.

``Person`` wraps one member of a :class:`core.testing.MemMesh`: ``up()`` opens its node
(on the same data dir each time) and starts its :class:`RelayService` on it, as ``mesh
up`` does; ``down()`` closes both. A toy app ("note") shows the kit as apps use it: an
outbox whose direct delivery always fails (the recipient is never reachable directly in
these tests) with a hand-off to the relay, and an inbound handler that keeps what it
fetched once per ref, in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from core.db import AppDatabase
from core.node import Node
from core.outbox import DeliveryResult, Outbox, OutboxEntry, Retry, RetryPolicy
from core.relay.config import RelayConfig
from core.relay.service import RelayService, RelayVerdict
from core.testing import MemMesh

P = TypeVar("P", bound="Person")

FAST = RelayConfig(handoff_after=0.2, fetch_interval=3600.0, connect_timeout=3.0, io_timeout=20.0)


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    """Wait (bounded) until ``check()`` holds."""
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 - state of several services, no one event
            await asyncio.sleep(0.02)


@dataclass
class Person:
    mesh: MemMesh
    index: int
    config: RelayConfig = FAST
    relay: RelayService | None = None
    notes_db: AppDatabase | None = None
    notes: Outbox | None = None
    got: list[tuple[bytes, bytes]] = field(default_factory=list)  # (sender, body) in order
    seen: set[bytes] = field(default_factory=set)
    key: bytes = b""  # the node's key (kept while it is down)

    @property
    def node(self) -> Node:
        return self.mesh[self.index]

    @property
    def data_dir(self) -> Path:
        return self.mesh.base_dir / f"node{self.index}"

    @property
    def service(self) -> RelayService:
        assert self.relay is not None, "the person is down"
        return self.relay

    async def up(self, *, ready: bool = True) -> None:
        await self.start_services(await self.mesh.start(self.index, ready=ready))

    async def start_services(self, node: Node) -> None:
        """The relay service and the toy app on ``node``, as ``mesh up`` starts them."""
        self.key = node.key
        self.relay = RelayService(node, self.config, self.data_dir)
        await self.relay.start()
        node.relay = self.relay
        self.notes_db = await AppDatabase.open(
            self.data_dir / "notes.db", {1: ("CREATE TABLE t (x)",)}, what="notes"
        )
        self.notes = await Outbox.open(
            self.notes_db, name="note", policy=RetryPolicy(initial=0.1, max_delay=0.5),
            max_entries=10_000,
        )  # fmt: skip
        self.notes.start(
            node,
            deliver=_never_directly,
            expired=_nothing,
            handoff=self.relay.handoff("note"),
            handoff_after=self.config.handoff_after,
        )
        self.relay.register_inbound("note", self._take)

    async def _take(self, sender: bytes, body: bytes) -> RelayVerdict:
        if body not in self.seen:
            self.seen.add(body)
            self.got.append((sender, body))
        return RelayVerdict.ACCEPTED

    async def down(self) -> None:
        if self.notes is not None:
            await self.notes.close()
            self.notes = None
        if self.notes_db is not None:
            await self.notes_db.close()
            self.notes_db = None
        if self.relay is not None:
            await self.relay.close()
            self.relay = None
        await self.stop_node()

    async def stop_node(self) -> None:
        await self.mesh.stop(self.index)

    async def send_note(self, to: Person | bytes, body: bytes, ref: str) -> None:
        assert self.notes is not None
        key = to if isinstance(to, bytes) else to.key
        await self.notes.put(key, body, ref=ref)


async def _never_directly(dest: bytes, entries: list[OutboxEntry]) -> list[DeliveryResult]:
    return [Retry("not reachable directly (test)") for _ in entries]


async def _nothing(entry: OutboxEntry) -> None:
    return None


class Crowd:
    """People on one memory mesh; ``async with Crowd(tmp_path) as crowd``: every person is
    taken down (services, then node) at the end."""

    def __init__(self, base_dir: Path) -> None:
        self.mesh = MemMesh(base_dir)
        self.people: list[Person] = []

    async def __aenter__(self) -> Crowd:
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            for person in self.people:
                if person.relay is not None:
                    await person.down()
        finally:
            await self.mesh.close()

    async def add(
        self,
        n: int,
        config: RelayConfig = FAST,
        kind: type[P] = Person,  # type: ignore[assignment]
    ) -> list[P]:
        """``n`` more people (of ``kind``: a Person with an app on top), each linked to
        every running one, up."""
        out: list[P] = []
        for _ in range(n):
            running = [i for i in range(len(self.mesh)) if _running(self.mesh, i)]
            node = await self.mesh.add(links=running)
            index = self.mesh.index(node)
            await self.mesh.stop(index)
            person = kind(self.mesh, index, config)
            await person.up()
            out.append(person)
            self.people.append(person)
        return out

    async def trio(self, kind: type[P] = Person) -> tuple[P, P, P]:  # type: ignore[assignment]
        """A, B and R: R allows A and B, who are each other's contacts and use R, and
        each knows that the other does."""
        a, b, r = await self.add(3, FAST, kind)
        await a.node.contacts.add(b.key, "bob")
        await b.node.contacts.add(a.key, "alice")
        await r.service.allow(a.key)
        await r.service.allow(b.key)
        await a.service.use(r.key)
        await b.service.use(r.key)

        async def both_know() -> bool:
            at_a = (await a.service.db.contact_relays(b.key)).get(b.key)
            at_b = (await b.service.db.contact_relays(a.key)).get(a.key)
            return at_a == [r.key] and at_b == [r.key]

        await until(both_know)
        return a, b, r


def _running(mesh: MemMesh, index: int) -> bool:
    try:
        mesh[index]
    except Exception:
        return False
    return True
