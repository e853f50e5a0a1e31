"""embedded - real daemon - embedded: two EmbeddedYggdrasil nodes routed by yggdrasil 0.5.12.

The daemon (``IfName: none``) listens on loopback; both embedded nodes peer with it
and nothing else, so every packet between them is forwarded by the daemon's ironwood
router. We also record every session packet the daemon's node and the far node send
us, and check them against the wire layout: inits/acks are 193 bytes and open, traffic
headers parse, and nothing was undecryptable, replayed or of an unknown key sequence.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.address import address_for_key
from core.embedded import ipv6 as v6
from core.embedded.node import EmbeddedYggdrasil
from core.embedded.session import SESSION_INIT_SIZE, SessionType, decode_uvarint
from core.identity import Identity
from tests.conftest import require
from tests.embedded.test_node_memory import udp_packet
from tests.lab.fixtures import poll
from tests.lab.lab import Daemon, daemon_available, daemon_running, free_port

pytestmark = pytest.mark.lab


@dataclass
class Chain:
    daemon: Daemon
    a: EmbeddedYggdrasil
    b: EmbeddedYggdrasil
    captured: dict[str, list[tuple[bytes, bytes]]]


def record(node: EmbeddedYggdrasil, into: list[tuple[bytes, bytes]]) -> None:
    """Tap the network handler under the session layer (what arrives off the wire)."""
    inner = node.conn._on_network_packet

    def tap(source: bytes, payload: bytes) -> None:
        into.append((source, payload))
        inner(source, payload)

    node.network.set_handler(tap)


@pytest.fixture
async def chain(tmp_path: Path) -> AsyncIterator[Chain]:
    require(*daemon_available())
    port = free_port()
    async with daemon_running(tmp_path / "d", listen=[f"tcp://127.0.0.1:{port}"]) as daemon:
        a = EmbeddedYggdrasil(Identity.generate().seed)
        b = EmbeddedYggdrasil(Identity.generate().seed)
        captured: dict[str, list[tuple[bytes, bytes]]] = {"a": [], "b": []}
        record(a, captured["a"])
        record(b, captured["b"])
        async with a, b:
            for node in (a, b):
                await node.add_peer(f"tcp://127.0.0.1:{port}")
            d_key = daemon.public_key
            await poll(lambda: all(any(p.up and p.key == d_key for p in n.peers())
                                   for n in (a, b)), 15)  # fmt: skip
            yield Chain(daemon, a, b, captured)


async def test_embedded_nodes_ping_each_other_through_the_daemon(chain: Chain) -> None:
    a, b = chain.a, chain.b

    async def answered() -> bool:
        return (await a.ping(b.address, 1, 0.1, 2.0))[0] is not None

    await poll(answered, 40, interval=0.2)
    rtts = await a.ping(b.address, count=3, interval=0.1, timeout=3.0)
    assert all(r is not None for r in rtts), rtts
    back = await b.ping(a.address, count=3, interval=0.1, timeout=3.0)
    assert all(r is not None for r in back), back
    # Neither embedded node is peered with the other: the daemon forwarded everything.
    assert {p.key for p in a.peers()} == {chain.daemon.public_key}
    assert a.key_for_address(b.address) == b.public_key
    # A spoofed source over a real, daemon-routed session is dropped by b.
    got: list[bytes] = []
    b.set_ipv6_handler(got.append)
    forged = udp_packet(address_for_key(chain.daemon.public_key).packed,
                        b.address.packed, b"spoofed")  # fmt: skip
    dropped = b.ipv6.dropped
    a._send_session(b.public_key, bytes([v6.TYPE_SESSION_TRAFFIC]) + forged)
    a.send_ipv6(udp_packet(a.address.packed, b.address.packed, b"honest"))
    await poll(lambda: any(p.endswith(b"honest") for p in got), 10)
    assert not any(p.endswith(b"spoofed") for p in got)
    assert b.ipv6.dropped == dropped + 1
    check_captures(chain)


def check_captures(chain: Chain) -> None:
    for name, node in (("a", chain.a), ("b", chain.b)):
        packets = chain.captured[name]
        assert packets, f"{name} captured nothing"
        for _source, data in packets:
            if data[0] in (SessionType.INIT, SessionType.ACK):
                assert len(data) == SESSION_INIT_SIZE
            elif data[0] == SessionType.TRAFFIC:
                _, off = decode_uvarint(data, 1)
                _, off = decode_uvarint(data, off)
                nonce, off = decode_uvarint(data, off)
                assert nonce >= 1 and len(data) - off >= 16 + 32
        counters = node.conn.sessions_manager.counters
        print(dict(counters), node.sessions())
        assert counters["bad_packet"] == 0 and counters["undecryptable"] == 0, counters
        assert counters["replayed"] == 0, counters


async def test_daemon_sessions_with_both(chain: Chain) -> None:
    for node in (chain.a, chain.b):

        async def nodeinfo(node: EmbeddedYggdrasil = node) -> object:
            try:
                return await chain.daemon.actl("getNodeInfo", key=node.public_key.hex())
            except RuntimeError:
                return None

        await poll(nodeinfo, 40)
    sessions = (await chain.daemon.actl("getSessions"))["sessions"]
    assert {s["key"] for s in sessions} >= {chain.a.public_key.hex(), chain.b.public_key.hex()}
    from_daemon = [d for s, d in chain.captured["a"] if s == chain.daemon.public_key]
    kinds = {d[0] for d in from_daemon}
    assert SessionType.INIT in kinds and SessionType.TRAFFIC in kinds
    check_captures(chain)


async def test_session_heals_after_daemon_restart(tmp_path: Path) -> None:
    """The daemon forgets our session (restart, same key): both sides resynchronise."""
    require(*daemon_available())
    port = free_port()
    d_id = Identity.generate()
    node = EmbeddedYggdrasil(Identity.generate().seed)

    async def nodeinfo() -> object:
        try:
            return await node.remote_nodeinfo(d_id.public_key, timeout=2.0)
        except TimeoutError:
            return None

    async with node:
        for run in ("first", "second"):
            async with daemon_running(
                tmp_path / run,
                private_key=d_id.to_yggdrasil_hex(),
                listen=[f"tcp://127.0.0.1:{port}"],
                node_info={"e2test": run},
            ):
                if run == "first":
                    await node.add_peer(f"tcp://127.0.0.1:{port}")
                await poll(lambda: any(p.up for p in node.peers()), 30)
                info = await poll(nodeinfo, 40)
                assert isinstance(info, dict) and info["e2test"] == run
                if run == "first":
                    first_answer = asyncio.get_running_loop().time()
        # The restarted daemon's init (new keys, key sequence 0) replaced our stale session
        # with a new one (upstream would keep the stale one and only adopt the keys).
        (session,) = node.sessions()
        assert session.key == d_id.public_key
        assert session.uptime < asyncio.get_running_loop().time() - first_answer
        assert node.conn.sessions_manager.counters["peer_restarted"] >= 1
        assert node.conn.sessions_manager.counters["bad_packet"] == 0
