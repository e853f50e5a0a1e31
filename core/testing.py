"""In-memory meshes of real nodes for app tests: no sockets, no daemon, no polling.

    from core.testing import mem_mesh

    async with mem_mesh(2, tmp_path) as mesh:        # every pair linked
        a, b = mesh                                   # core.Node objects, routes ready
        service = create_service(b, config, b.config.data_dir)

    async with mem_mesh(3, tmp_path, topology="chain") as mesh:   # A - B - C
        a, b, c = mesh                                # A and C talk only through B

Each node is a real :class:`core.node.Node` on the embedded backend: its own data
directory (``tmp_path/node0`` ...), its own identity (``node.key`` in that directory),
its own ``node.contacts``; encrypted sessions, ironwood routing and the userspace
TCP/UDP are the real ones. Only the carrier under the peer links is replaced: a link
is an in-process pipe (:class:`MemoryPipe`) instead of a TCP connection, so the link
handshake, keepalives and frames still run, and forwarding through a middle node is
real forwarding. When ``mem_mesh`` (or :meth:`MemMesh.link`) returns, every node
already reaches every other: the first packets need no retry, tests need no ping.

Topology changes for tests of offline peers: :meth:`MemMesh.unlink` /
:meth:`MemMesh.link` cut and join a link, :meth:`MemMesh.stop` / :meth:`MemMesh.start`
close a node and open it again on the same data directory (same key, same databases).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, overload

from core.backends.embedded import EmbeddedBackend
from core.config import NodeConfig
from core.embedded.carriers.memory import MemoryPipe
from core.embedded.config import NetworkConfig
from core.embedded.network import PacketNetwork, PeerEvent
from core.embedded.node import EmbeddedConfig
from core.errors import UsageError
from core.identity import Identity, load_or_create_identity
from core.node import Node
from core.tasks import within

__all__ = ["MemMesh", "MemoryPipe", "Topology", "mem_mesh"]

log = logging.getLogger(__name__)

Topology = Literal["full", "chain", "star", "none"]
READY_TIMEOUT = 20.0  # links up and every route proven, or mem_mesh fails saying which
PROBE_TIMEOUT = 0.2  # one echo while a route is still being looked up
MAINTENANCE_STEP = 0.005  # between the router maintenance rounds while the tree forms
# Links in one process share one event loop: a busy loop (an aiortc test, a slow CI
# machine) must not look like a dead peer, so the silence allowed is generous. All
# nodes of one in-memory mesh use these timings (router timings stay yggdrasil's).
# Lookups may repeat sooner than yggdrasil's 1 s: only this node's own rate.
MEM_NETWORK = NetworkConfig(peer_timeout=30.0, path_throttle=0.05)


@dataclass
class _Member:
    index: int
    config: NodeConfig
    identity: Identity | None = None  # None: the one in config.data_dir (created once)
    node: Node | None = None


@dataclass(frozen=True)
class _Link:
    ends: tuple[MemoryPipe, MemoryPipe]


class MemMesh(Sequence[Node]):
    """The nodes of an in-memory mesh, indexable like a list (``a, b = mesh``)."""

    def __init__(self, base_dir: Path, *, services: dict[str, dict[str, Any]] | None = None):
        self.base_dir = base_dir
        self._services = services or {}
        self._members: list[_Member] = []
        self._links: dict[frozenset[int], _Link] = {}
        self._wanted: set[frozenset[int]] = set()  # links restored by start()

    # -- Sequence[Node] ------------------------------------------------------------
    @overload
    def __getitem__(self, index: int) -> Node: ...
    @overload
    def __getitem__(self, index: slice) -> list[Node]: ...
    def __getitem__(self, index: int | slice) -> Node | list[Node]:
        if isinstance(index, slice):
            return [self._node(m.index) for m in self._members[index]]
        return self._node(self._members[index].index)

    def __len__(self) -> int:
        return len(self._members)

    def __iter__(self) -> Iterator[Node]:
        return (self._node(m.index) for m in self._members)

    def _node(self, index: int) -> Node:
        node = self._members[index].node
        if node is None:
            raise UsageError(f"node {index} of the memory mesh is stopped (mesh.start({index}))")
        return node

    def index(self, node: Node | int, start: int = 0, stop: int | None = None) -> int:
        """The position of ``node`` (a :class:`Node` or already an index)."""
        if isinstance(node, int):
            if not 0 <= node < len(self._members):
                raise UsageError(f"no node {node} in a memory mesh of {len(self)}")
            return node
        for member in self._members:
            if member.node is node:
                return member.index
        raise UsageError("that node is not in this memory mesh")

    # -- nodes ----------------------------------------------------------------------
    async def add(self, *, links: Iterable[Node | int] = (), ready: bool = True) -> Node:
        """Open one more node (``base_dir/node<i>``), linked to ``links``."""
        index = len(self._members)
        data_dir = self.base_dir / f"node{index}"
        services = {k: MappingProxyType(dict(v)) for k, v in self._services.items()}
        config = NodeConfig(
            data_dir=data_dir, backend="embedded", services=MappingProxyType(services)
        )
        self._members.append(_Member(index, config))
        node = await self._open(index)
        for other in links:
            await self.link(index, other, ready=False)
        if ready:
            await self.wait_ready()
        return node

    async def _open(self, index: int) -> Node:
        member = self._members[index]
        config = member.config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        identity = member.identity or load_or_create_identity(config.data_dir)[0]
        backend = EmbeddedBackend(config, identity, EmbeddedConfig(network=MEM_NETWORK))
        member.node = await Node.open(config, identity, backend=backend)
        return member.node

    def node_opener(self) -> Callable[[NodeConfig, Identity | None], Awaitable[Node]]:
        """What ``core.process.NodeProcess(..., open_node=mesh.node_opener())`` takes:
        the process's node becomes one more member of this mesh (its own config, data
        dir and identity), with no link yet: ``await mesh.link(proc.node, other)``
        once ``proc.ready`` is set. The process closes that node when it stops."""

        async def open_node(config: NodeConfig, identity: Identity | None) -> Node:
            index = len(self._members)
            self._members.append(_Member(index, config, identity))
            return await self._open(index)

        return open_node

    async def stop(self, node: Node | int) -> None:
        """Close the node (its links go down on the other side too); ``start`` reopens it."""
        index = self.index(node)
        member = self._members[index]
        for pair in [p for p in self._links if index in p]:
            await self._cut(pair)
        if member.node is not None:
            await member.node.close()
            member.node = None

    async def start(self, node: Node | int, *, ready: bool = True) -> Node:
        """Open a stopped node again: same data directory and key; its links restored."""
        index = self.index(node)
        if self._is_open(index):
            return self._node(index)
        for pair in [p for p in self._links if index in p]:
            await self._cut(pair)  # links of a node closed behind our back (a NodeProcess)
        fresh = await self._open(index)
        for pair in [p for p in self._wanted if index in p]:
            (other,) = pair - {index}
            if self._is_open(other):
                await self._join(index, other)
        if ready:
            await self.wait_ready()
        return fresh

    async def restart(self, node: Node | int) -> Node:
        await self.stop(node)
        return await self.start(node)

    async def close(self) -> None:
        for pair in list(self._links):
            await self._cut(pair)
        for member in reversed(self._members):
            if member.node is not None:
                node, member.node = member.node, None
                await node.close()

    # -- links ----------------------------------------------------------------------
    async def link(self, a: Node | int, b: Node | int, *, ready: bool = True) -> None:
        """Join ``a`` and ``b`` by an in-memory link; returns once both see it up (and,
        with ``ready``, once every running node reaches every other it can)."""
        i, j = self.index(a), self.index(b)
        if i == j:
            raise UsageError("a node cannot be linked to itself")
        self._wanted.add(frozenset((i, j)))
        if frozenset((i, j)) not in self._links:
            await self._join(i, j)
        if ready:
            await self.wait_ready()

    async def unlink(self, a: Node | int, b: Node | int) -> None:
        """Cut the link between ``a`` and ``b``; returns once both saw it go down."""
        pair = frozenset((self.index(a), self.index(b)))
        self._wanted.discard(pair)
        await self._cut(pair)

    def linked(self, a: Node | int, b: Node | int) -> bool:
        return frozenset((self.index(a), self.index(b))) in self._links

    async def _join(self, i: int, j: int) -> None:
        net_i, net_j = self._network(i), self._network(j)
        loop = asyncio.get_running_loop()
        up = [
            _peer_event(net_i, "up", net_j.public_key),
            _peer_event(net_j, "up", net_i.public_key),
        ]
        end_i, end_j = MemoryPipe.pair(loop, f"node{i}", f"node{j}")
        try:
            end_i.start(net_i.carrier_link(f"node{j}", inbound=False))
            end_j.start(net_j.carrier_link(f"node{i}", inbound=True))
            await within(asyncio.gather(*(f for f, _ in up)), READY_TIMEOUT)
        except TimeoutError:
            end_i.abort()
            raise AssertionError(f"in-memory link node{i} - node{j} did not come up") from None
        finally:
            for _, unsubscribe in up:
                unsubscribe()
        self._links[frozenset((i, j))] = _Link((end_i, end_j))
        log.debug("memory link node%d - node%d up", i, j)

    async def _cut(self, pair: frozenset[int]) -> None:
        link = self._links.pop(pair, None)
        if link is None:
            return
        i, j = sorted(pair)
        waits = []
        for me, other in ((i, j), (j, i)):
            if self._is_open(me) and self._is_open(other):
                key = self._network(other).public_key
                waits.append(_peer_event(self._network(me), "down", key))
        link.ends[0].abort()
        log.debug("memory link node%d - node%d cut", i, j)
        try:
            await within(asyncio.gather(*(f for f, _ in waits)), READY_TIMEOUT)
        finally:
            for _, unsubscribe in waits:
                unsubscribe()

    def _is_open(self, index: int) -> bool:
        node = self._members[index].node
        return node is not None and not node.closed

    def _network(self, index: int) -> PacketNetwork:
        backend = self._node(index).backend
        assert isinstance(backend, EmbeddedBackend)
        network = backend.ygg.network
        assert isinstance(network, PacketNetwork)
        return network

    # -- readiness ------------------------------------------------------------------
    async def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until every running node reaches every other running node in its component
        (an echo answered end to end: tree built, path looked up, session open)."""
        running = [m.index for m in self._members if m.node is not None and not m.node.closed]
        pairs = [
            (i, j) for i, j in itertools.permutations(running, 2) if self._connected(i, j, running)
        ]

        async def reach(i: int, j: int) -> None:
            src, dst = self._node(i), self._node(j)
            while (await src.ping(dst.address, count=1, timeout=PROBE_TIMEOUT))[0] is None:
                self._maintain(running)

        try:
            async with asyncio.timeout(timeout):
                # the tree first: maintenance rounds (each a few loop turns) until every
                # component agrees on its root, then one echo per ordered pair
                while not self._trees_agree(running):
                    self._maintain(running)
                    await asyncio.sleep(MAINTENANCE_STEP)
                await asyncio.gather(*(reach(i, j) for i, j in pairs))
        except TimeoutError:
            raise AssertionError(f"memory mesh: routes not ready after {timeout} s") from None

    def _maintain(self, running: list[int]) -> None:
        for index in running:
            self._network(index).maintain()

    def _trees_agree(self, running: list[int]) -> bool:
        for i, j in itertools.combinations(running, 2):
            same = self._network(i).tree().root == self._network(j).tree().root
            if not same and self._connected(i, j, running):
                return False
        return True

    def _connected(self, i: int, j: int, running: list[int]) -> bool:
        seen, todo = {i}, [i]
        while todo:
            here = todo.pop()
            for pair in self._links:
                if here in pair:
                    (there,) = pair - {here}
                    if there in running and there not in seen:
                        seen.add(there)
                        todo.append(there)
        return j in seen


def _peer_event(network: PacketNetwork, kind: str, key: bytes) -> tuple[asyncio.Future[None], Any]:
    """A future resolved when ``network`` reports a link ``kind`` (up/down) with ``key``."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_event(event: PeerEvent) -> None:
        if event.kind == kind and event.key == key and not future.done():
            future.set_result(None)

    unsubscribe = network.subscribe_peer_events(on_event)
    up_now = any(p.up and p.key == key for p in network.peers())
    if up_now == (kind == "up"):  # already so (a node closed by the test itself)
        future.set_result(None)
    return future, unsubscribe


def _topology_links(n: int, topology: Topology) -> list[tuple[int, int]]:
    if topology == "full":
        return list(itertools.combinations(range(n), 2))
    if topology == "chain":
        return [(i, i + 1) for i in range(n - 1)]
    if topology == "star":
        return [(0, i) for i in range(1, n)]
    if topology == "none":
        return []
    raise UsageError(f"unknown topology {topology!r}: full, chain, star or none")


@contextlib.asynccontextmanager
async def mem_mesh(
    n: int,
    base_dir: Path,
    *,
    topology: Topology = "full",
    services: dict[str, dict[str, Any]] | None = None,
) -> AsyncIterator[MemMesh]:
    """``n`` nodes under ``base_dir`` (``node0`` ... ``node<n-1>``), linked as
    ``topology`` says ("full": every pair; "chain": 0-1-2-..., inner nodes forward;
    "star": node 0 in the middle; "none": link them yourself), routes ready.
    ``services`` becomes each node's ``config.services`` (``{"chat": {...}}``)."""
    if n < 0:
        raise UsageError("mem_mesh: n must be ≥ 0")
    mesh = MemMesh(base_dir, services=services)
    try:
        for _ in range(n):
            await mesh.add(ready=False)
        for i, j in _topology_links(n, topology):
            await mesh.link(i, j, ready=False)
        await mesh.wait_ready()
        yield mesh
    finally:
        await mesh.close()
