"""Session inits/acks that real yggdrasil 0.5.12 daemons exchange, opened with our code.

Two daemons (``IfName: none``, loopback only) peer through a TCP relay in this test
that records both directions. A ``getNodeInfo`` from A to B makes A open an ironwood
session. Knowing both long-term keys, we find the 193-byte init in A→B bytes and the
ack in B→A bytes by trying every offset, decrypt them with *our* Ed25519→X25519
conversion and box code, and check the signature, the key sequence numbers and the
``seq`` timestamp. Then our own encrypt() must produce packets the same decoder
(and therefore the same layout) accepts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from core.embedded import crypto
from core.embedded.session import SESSION_INIT_SIZE, SessionInit, SessionType
from core.identity import Identity
from tests.conftest import require
from tests.lab.fixtures import poll
from tests.lab.lab import daemon_available, daemon_running, free_port


class Relay:
    """A TCP relay on loopback that records each direction's bytes."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.forward = bytearray()  # client -> target
        self.backward = bytearray()  # target -> client
        self._writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, up_writer]
        async with asyncio.TaskGroup() as group:
            group.create_task(self._pump(reader, up_writer, self.forward))
            group.create_task(self._pump(up_reader, writer, self.backward))

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bytearray
    ) -> None:
        try:
            while data := await reader.read(65536):
                record += data
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in self._writers:
                writer.close()
            await self.server.wait_closed()


def find_inits(stream: bytes, kind: int, receiver: Identity, sender: Identity) -> list[SessionInit]:
    box_priv = crypto.ed25519_private_to_x25519(receiver.seed)
    found = []
    for offset in range(len(stream) - SESSION_INIT_SIZE + 1):
        if stream[offset] != kind:
            continue
        window = bytes(stream[offset : offset + SESSION_INIT_SIZE])
        try:
            found.append(SessionInit.decrypt(box_priv, sender.public_key, window))
        except ValueError:
            continue
    return found


async def test_daemon_session_init_and_ack_open_with_our_crypto(tmp_path: Path) -> None:
    require(*daemon_available())
    a_id, b_id = Identity.generate(), Identity.generate()
    b_port = free_port()
    relay = Relay(b_port)
    relay_port = await relay.start()
    started = int(time.time())
    try:
        async with (
            daemon_running(
                tmp_path / "b",
                private_key=b_id.to_yggdrasil_hex(),
                listen=[f"tcp://127.0.0.1:{b_port}"],
                node_info={"e2test": "b"},
            ),
            daemon_running(
                tmp_path / "a",
                private_key=a_id.to_yggdrasil_hex(),
                peers=[f"tcp://127.0.0.1:{relay_port}"],
            ) as a,
        ):

            async def peered() -> bool:
                peers = (await a.actl("getPeers"))["peers"]
                return any(p.get("up") for p in peers)

            await poll(peered, 20)

            async def nodeinfo() -> object:
                try:
                    return await a.actl("getNodeInfo", key=b_id.public_key.hex())
                except RuntimeError:  # routing not converged yet: ask again
                    return None

            info = await poll(nodeinfo, 40)
            assert info[b_id.public_key.hex()]["e2test"] == "b"
            await poll(lambda: find_inits(bytes(relay.backward), SessionType.ACK, a_id, b_id), 5)
    finally:
        await relay.close()
    inits = find_inits(bytes(relay.forward), SessionType.INIT, b_id, a_id)
    acks = find_inits(bytes(relay.backward), SessionType.ACK, a_id, b_id)
    assert inits, "no session init from A decrypted with our conversion of B's key"
    assert acks, "no session ack from B decrypted with our conversion of A's key"
    init, ack = inits[0], acks[0]
    # A buffered its request and sent the buffer's init: key sequence 0 (_bufferAndInit).
    assert init.key_seq == 0
    # B created a session from the init, advanced its keys once, and acked (keySeq 1).
    assert ack.key_seq == 1
    now = int(time.time())
    assert started - 2 <= init.seq <= now + 2 and started - 2 <= ack.seq <= now + 2
    assert init.current != init.next and ack.current != ack.next
    # Nothing else in the streams opens as an init to the wrong receiver.
    assert not find_inits(bytes(relay.forward), SessionType.INIT, a_id, b_id)


def test_our_init_has_the_daemon_layout() -> None:
    sender, receiver = Identity.generate(), Identity.generate()
    current, _ = crypto.new_box_keys()
    nxt, _ = crypto.new_box_keys()
    init = SessionInit(current, nxt, 7, 1_700_000_000)
    data = init.encrypt(sender.seed, receiver.public_key, SessionType.ACK)
    assert len(data) == 193 and data[0] == SessionType.ACK
    # Open it by hand, the way session.go lays it out, not with our decoder.
    eph = data[1:33]
    shared = crypto.box_shared(eph, crypto.ed25519_private_to_x25519(receiver.seed))
    payload = crypto.box_open(data[33:], 0, shared)
    assert payload is not None and len(payload) == 64 + 32 + 32 + 8 + 8
    sig = payload[:64]
    assert payload[64:96] == current and payload[96:128] == nxt
    assert payload[128:136] == (7).to_bytes(8, "big")
    assert payload[136:144] == (1_700_000_000).to_bytes(8, "big")
    assert crypto.ed_verify(eph + payload[64:], sig, sender.public_key)
    assert (
        SessionInit.decrypt(
            crypto.ed25519_private_to_x25519(receiver.seed), sender.public_key, data
        )
        == init
    )
