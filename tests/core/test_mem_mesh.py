"""core.testing.mem_mesh: real embedded nodes in one process over in-memory links."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from core.identity import KEY_FILE_NAME, load_identity
from core.node import Node
from core.testing import MemMesh, MemoryPipe, mem_mesh

pytestmark = pytest.mark.timeout(60)


async def _echo_server(node: Node, port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readexactly(5))
        await writer.drain()
        writer.close()

    await node.start_server(handle, port)


async def _echo(src: Node, dst: Node, port: int) -> bytes:
    reader, writer = await src.open_connection(dst.address, port, timeout=5)
    writer.write(b"hello")
    data = await asyncio.wait_for(reader.readexactly(5), 5)
    writer.close()
    return data


async def test_nodes_talk_tcp_as_soon_as_the_mesh_is_up(tmp_path: Path) -> None:
    async with mem_mesh(3, tmp_path) as mesh:
        a, b, c = mesh
        assert len({a.key, b.key, c.key}) == 3
        await _echo_server(c, 7000)
        # no retry, no ping first: the route is ready when mem_mesh returns
        assert await asyncio.wait_for(_echo(a, c, 7000), 2) == b"hello"
        peers = {p.key for p in await a.peers() if p.up}
        assert peers == {b.key, c.key}
        assert all(p.uri.startswith("mem://") for p in await a.peers())


async def test_each_node_has_its_own_data_dir_identity_and_contacts(tmp_path: Path) -> None:
    async with mem_mesh(2, tmp_path) as mesh:
        for i, node in enumerate(mesh):
            assert node.config.data_dir == tmp_path / f"node{i}"
            assert load_identity(node.config.data_dir / KEY_FILE_NAME).public_key == node.key
            assert node.backend.name == "embedded"
        a, b = mesh
        async with a.events.subscribe(("contact.",)) as sub:
            await a.contacts.add(b.key, alias="bee")
            event = await asyncio.wait_for(sub.get(), 5)
        assert event is not None and event.kind == "contact.added"
        assert (await a.contacts.resolve("bee")).key == b.key
        assert await b.contacts.list() == []  # one list per node
        assert (a.config.data_dir / "contacts.db").exists()


async def test_chain_a_and_c_talk_only_through_b(tmp_path: Path) -> None:
    async with mem_mesh(3, tmp_path, topology="chain") as mesh:
        a, b, c = mesh
        assert {p.key for p in await a.peers()} == {b.key}
        assert {p.key for p in await c.peers()} == {b.key}
        await _echo_server(c, 7001)
        assert await _echo(a, c, 7001) == b"hello"
        # the session is end to end: A knows C's key for C's address, B only forwards
        assert await a.key_for_address(c.address) == c.key


async def test_unlink_cuts_and_link_restores_a_route(tmp_path: Path) -> None:
    async with mem_mesh(2, tmp_path) as mesh:
        a, b = mesh
        await mesh.unlink(a, b)
        assert not mesh.linked(a, b)
        assert [p for p in await a.peers() if p.up] == []
        assert (await a.ping(b.address, count=1, timeout=0.3))[0] is None
        await mesh.link(a, b)
        await _echo_server(b, 7002)
        assert await _echo(a, b, 7002) == b"hello"


async def test_a_stopped_node_starts_again_with_its_key_and_links(tmp_path: Path) -> None:
    async with mem_mesh(2, tmp_path) as mesh:
        a, b = mesh
        key = b.key
        await mesh.stop(b)
        with pytest.raises(Exception, match="stopped"):
            mesh[1]
        assert [p for p in await a.peers() if p.up] == []
        b2 = await mesh.start(1)
        assert b2 is not b and b2.key == key and mesh[1] is b2
        await _echo_server(b2, 7003)
        assert await _echo(a, b2, 7003) == b"hello"


async def test_add_joins_a_new_node_to_a_running_mesh(tmp_path: Path) -> None:
    mesh = MemMesh(tmp_path)
    try:
        a = await mesh.add()
        b = await mesh.add(links=[a])
        c = await mesh.add(links=[b])
        await _echo_server(a, 7004)
        assert await _echo(c, a, 7004) == b"hello"
        assert mesh.index(c) == 2
    finally:
        await mesh.close()


class _Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.paused = 0
        self.resumed = 0
        self.lost: list[Exception | None] = []

    def data_received(self, data: bytes) -> None:
        self.data += data

    def pause_writing(self) -> None:
        self.paused += 1

    def resume_writing(self) -> None:
        self.resumed += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


async def test_memory_pipe_holds_a_writer_back_while_the_reader_is_paused() -> None:
    a, b = MemoryPipe.pair(asyncio.get_running_loop(), "a", "b")
    sa, sb = _Sink(), _Sink()
    a.start(sa)
    b.start(sb)
    assert a.get_extra_info("peername") == ("b", 0)
    a.set_write_buffer_limits(high=1000)
    b.pause_reading()
    for _ in range(20):
        a.write(b"x" * 100)
    await asyncio.sleep(0.01)
    assert sa.paused == 1 and sa.resumed == 0
    assert bytes(sb.data) == b"" and a.get_write_buffer_size() == 2000
    b.resume_reading()
    await asyncio.sleep(0.01)
    assert bytes(sb.data) == b"x" * 2000
    assert sa.resumed == 1 and a.get_write_buffer_size() == 0
    a.close()
    await asyncio.sleep(0.01)
    assert sa.lost == [None] and sb.lost == [None]
    a.write(b"late")  # ignored after close
    await asyncio.sleep(0.01)
    assert len(sb.data) == 2000


async def test_a_node_the_test_closes_itself_does_not_hold_up_the_mesh(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with mem_mesh(2, tmp_path) as mesh:
        await mesh[1].close()
    assert loop.time() - started < 10


async def test_node_processes_run_over_the_memory_mesh(tmp_path: Path) -> None:
    from core.config import NodeConfig
    from core.control.client import ControlClient
    from core.identity import Identity
    from core.process import NodeProcess

    mesh = MemMesh(tmp_path)
    procs: list[tuple[NodeProcess, asyncio.Event, asyncio.Task[None]]] = []
    try:
        for name in ("a", "b"):
            config = NodeConfig(data_dir=tmp_path / name, backend="embedded")
            proc = NodeProcess(config, Identity.generate(), [], {}, open_node=mesh.node_opener())
            stop = asyncio.Event()
            task = asyncio.create_task(proc.run(stop))
            procs.append((proc, stop, task))
            await asyncio.wait_for(proc.ready.wait(), 20)
        a, b = (p.node for p, _, _ in procs)
        assert a is not None and b is not None
        await mesh.link(a, b)
        async with await ControlClient.connect(tmp_path / "a" / "control.sock") as client:
            assert (await client.call("ping", target=str(b.address), count=1))["rtts"][0]
            added = await client.call("contacts.add", key=b.key.hex(), alias="bee")
            assert added["alias"] == "bee"
            assert (await a.contacts.resolve("bee")).key == b.key
    finally:
        for _, stop, _ in procs:
            stop.set()
        for _, _, task in procs:
            await task
        await mesh.close()
