"""EncryptedPacketConn: ReadFrom/WriteTo by Ed25519 key over the in-memory network."""

from __future__ import annotations

import asyncio

import pytest

from core.address import partial_key_for_subnet, subnet_for_key
from core.embedded.packetconn import ClosedError, EncryptedPacketConn, OversizedMessageError
from core.embedded.session import SESSION_TRAFFIC_OVERHEAD
from core.identity import Identity
from tests.embedded.e2_memnet import MemoryHub


def transform(key: bytes) -> bytes:
    return partial_key_for_subnet(subnet_for_key(key))


async def test_write_to_read_from_and_mtu() -> None:
    hub = MemoryHub(mtu=2000)
    a_id, b_id = Identity.generate(), Identity.generate()
    a_net = hub.factory(a_id.seed, transform, lambda k: None, None)
    b_net = hub.factory(b_id.seed, transform, lambda k: None, None)
    a = EncryptedPacketConn(a_net, a_id.seed)
    b = EncryptedPacketConn(b_net, b_id.seed)
    for part in (a_net, b_net, a, b):
        await part.start()
    try:
        assert a.mtu == 2000 - SESSION_TRAFFIC_OVERHEAD
        assert a.write_to(b"hello", b_id.public_key) == 5
        payload, source = await asyncio.wait_for(b.read_from(), 5)
        assert (payload, source) == (b"hello", a_id.public_key)
        b.write_to(b"x" * b.mtu, a_id.public_key)  # exactly the MTU fits
        payload, source = await asyncio.wait_for(a.read_from(), 5)
        assert len(payload) == a.mtu and source == b_id.public_key
        with pytest.raises(OversizedMessageError, match="MTU"):
            a.write_to(b"x" * (a.mtu + 1), b_id.public_key)
        with pytest.raises(ValueError, match="32-byte"):
            a.write_to(b"x", b"short")
        assert {s.key for s in a.sessions()} == {b_id.public_key}
    finally:
        for part in (a, b, a_net, b_net):
            await part.close()
    with pytest.raises(ClosedError):
        a.write_to(b"late", b_id.public_key)
    with pytest.raises(ClosedError):
        await a.read_from()


async def test_read_queue_is_bounded() -> None:
    hub = MemoryHub()
    a_id, b_id = Identity.generate(), Identity.generate()
    a_net = hub.factory(a_id.seed, transform, lambda k: None, None)
    b_net = hub.factory(b_id.seed, transform, lambda k: None, None)
    a = EncryptedPacketConn(a_net, a_id.seed)
    b = EncryptedPacketConn(b_net, b_id.seed, read_queue=4)
    await a_net.start()
    await b_net.start()
    try:
        a.write_to(b"0", b_id.public_key)
        await asyncio.wait_for(b.read_from(), 5)
        for i in range(10):
            a.write_to(b"%d" % i, b_id.public_key)
        for _ in range(50):
            await asyncio.sleep(0)
        assert b.dropped_reads == 6
        got = [(await b.read_from())[0] for _ in range(4)]
        assert got == [b"0", b"1", b"2", b"3"]
    finally:
        for part in (a, b, a_net, b_net):
            await part.close()
