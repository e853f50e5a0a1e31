"""A relay killed with SIGKILL in the middle of a hand-off loses nothing and holds nothing
twice: R is a real `mesh up` process (embedded backend, peered over loopback TCP); A and
B are embedded nodes in this process with the relay service, as `mesh up` runs it.

A hands 300 items to R while B is down; R is kill -9'd once it took some, and started
again on the same data dir and port; A's outbox re-submits what was not acknowledged
(re-submitted copies of what R had committed are recognised, not stored twice). R then
holds exactly 300 for B, and B, up after A went down, takes each once, in order.
"""

from __future__ import annotations

import asyncio
import json
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from core.address import address_for_key
from core.config import NodeConfig
from core.identity import Identity
from core.node import Node
from tests.core.relay_people import FAST, Person, until
from tests.lab.lab import free_port
from tests.node.test_node_process_cli import Up, mesh

pytestmark = pytest.mark.timeout(300)

N = 300


@dataclass
class LoopPerson(Person):
    """A Person on its own embedded node, peered with ``peer`` over loopback TCP."""

    peer: str = ""
    home: Path = Path()
    ident: Identity | None = None
    opened: Node | None = None

    @property
    def node(self) -> Node:
        assert self.opened is not None, "down"
        return self.opened

    @property
    def data_dir(self) -> Path:
        return self.home

    async def up(self, *, ready: bool = True) -> None:
        config = NodeConfig(
            data_dir=self.home, backend="embedded", peers=(self.peer,), multicast_interfaces=()
        )
        self.opened = await Node.open(config, self.ident)
        await self.start_services(self.opened)

    async def stop_node(self) -> None:
        if self.opened is not None:
            await self.opened.close()
            self.opened = None


async def reach(node: Node, key: bytes) -> None:
    async with asyncio.timeout(60):
        while (await node.ping(str(address_for_key(key)), count=1, timeout=1))[0] is None:
            pass


def relay_status(data: Path) -> dict[str, Any]:
    out = mesh(data, "relay", "status", "--json")
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


async def test_a_relay_killed_mid_hand_off_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    port = free_port()
    listen = f"tcp://127.0.0.1:{port}"
    rdir = Path(tmp_path / "r")
    rdir.mkdir()
    r = await asyncio.to_thread(Up, rdir, "--listen", listen)
    people: list[LoopPerson] = []
    try:
        r_key = bytes.fromhex(r.status["key"])
        a = LoopPerson(None, 0, FAST, peer=listen, home=tmp_path / "a", ident=Identity.generate())  # type: ignore[arg-type]
        b = LoopPerson(None, 1, FAST, peer=listen, home=tmp_path / "b", ident=Identity.generate())  # type: ignore[arg-type]
        people += [a, b]
        await a.up()
        await b.up()
        for p in (a, b):
            await reach(p.node, r_key)
            out = await asyncio.to_thread(mesh, rdir, "relay", "allow", p.key.hex())
            assert out.returncode == 0, out.stderr
            await p.service.use(r_key)
        await a.node.contacts.add(b.key, "bob")
        await b.node.contacts.add(a.key, "alice")

        async def a_knows() -> bool:
            return (await a.service.db.contact_relays(b.key)).get(b.key) == [r_key]

        await until(a_knows, 60)
        await b.down()
        bodies = [f"item {i:04d}".encode() for i in range(N)]
        for i, body in enumerate(bodies):
            await a.send_note(b.key, body, ref=f"k{i}")
        assert a.notes is not None

        async def some_taken() -> bool:
            assert a.notes is not None
            return await a.notes.count() <= N - 20

        await until(some_taken, 60)
        r.proc.send_signal(signal.SIGKILL)  # mid hand-off
        r.proc.wait(10)
        r.log.close()
        left = await a.notes.count()
        assert 0 < left < N, left  # killed in the middle
        r = await asyncio.to_thread(Up, rdir, "--listen", listen)

        async def all_taken() -> bool:
            assert a.notes is not None
            return await a.notes.count() == 0

        await until(all_taken, 180)
        await a.down()
        serving = {s["key"]: s for s in (await asyncio.to_thread(relay_status, rdir))["serving"]}
        assert serving[b.key.hex()]["held"] == N  # nothing lost, nothing held twice

        await b.up()
        await until(lambda: _have(b, N), 120)
        assert [body for _, body in b.got] == bodies
        assert len(b.seen) == N
    finally:
        for p in people:
            if p.relay is not None:
                await p.down()
        await asyncio.to_thread(r.stop)


async def _have(p: Person, n: int) -> bool:
    return len(p.got) >= n
