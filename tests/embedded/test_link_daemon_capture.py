"""Wire vectors captured at test time from a real yggdrasil 0.5.12 daemon.

A daemon with a known key listens on loopback; a raw socket records its handshake and
first frames. Our decoder must read them, and our encoder must produce the daemon's
handshake byte for byte from the same key, password and priority (Ed25519 signatures
are deterministic). The daemon's bloom filter is compared with ours for its key.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from core.embedded import PacketNetwork
from core.embedded.bloom import Bloom
from core.embedded.meta import MetaReader, encode_meta
from core.embedded.network import subnet_bloom_transform
from core.embedded.tree import check_announce
from core.embedded.wire import (
    Announce,
    FrameDecoder,
    PacketType,
    PathBroken,
    PathLookup,
    PathNotify,
    SigReq,
    SigRes,
    Traffic,
)
from tests.conftest import require
from tests.lab.lab import (
    YGG_05,
    ctl_binary,
    daemon_available,
    daemon_running,
    free_port,
    loopback_daemon,
)


def _capture(port: int, our_meta: bytes, seconds: float = 1.5) -> bytes:
    """Send a handshake, then record whatever the daemon sends for ``seconds``."""
    data = b""
    with socket.create_connection(("127.0.0.1", port), 5) as sock:
        sock.sendall(our_meta)
        sock.settimeout(0.2)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            data += chunk
    return data


@pytest.mark.parametrize(("password", "priority"), [(b"", 0), (b"correct horse", 3)])
def test_daemon_handshake_and_first_frames(tmp_path: Path, password: bytes, priority: int) -> None:
    require(*daemon_available())
    port = free_port()
    query = f"?password={password.decode()}&priority={priority}" if password else ""
    daemon = loopback_daemon(tmp_path / "d", listen=[f"tcp://127.0.0.1:{port}{query}"])
    seed = bytes.fromhex(daemon.conf["PrivateKey"])[:32]
    try:
        daemon.start()
        daemon.wait_listening(port)
        captured = _capture(port, encode_meta(os.urandom(32), password=password))
    finally:
        daemon.stop()

    reader = MetaReader(password)
    meta = reader.feed(captured)
    assert meta is not None, captured.hex()
    assert meta.public_key == daemon.public_key
    assert (meta.major, meta.minor, meta.priority) == (0, 5, priority)
    # our encoder, same key/password/priority -> the daemon's exact bytes
    assert encode_meta(seed, priority=priority, password=password) == reader.raw

    frames = FrameDecoder(65535 * 2).feed(reader.rest)
    kinds = [frame[0] for frame in frames]
    assert kinds[:3] == [PacketType.SIG_REQ, PacketType.BLOOM_FILTER, PacketType.ANNOUNCE], kinds
    req = SigReq.parse(frames[0][1:])
    assert req.seq >= 1
    assert Bloom.parse(frames[1][1:]) == Bloom()  # a new peer first gets the empty filter
    ann = Announce.parse(frames[2][1:])
    assert ann.key == ann.parent == daemon.public_key  # alone: it is its own root
    assert ann.res.port == 0 and check_announce(ann)
    for frame in frames:  # everything round-trips byte for byte
        if frame[0] == PacketType.ANNOUNCE:
            assert bytes(Announce.parse(frame[1:])) == frame[1:]
        if frame[0] == PacketType.SIG_REQ:
            assert bytes(SigReq.parse(frame[1:])) == frame[1:]


_PARSERS: dict[int, Callable[[bytes], object]] = {
    PacketType.SIG_REQ: SigReq.parse,
    PacketType.SIG_RES: SigRes.parse,
    PacketType.ANNOUNCE: Announce.parse,
    PacketType.BLOOM_FILTER: Bloom.parse,
    PacketType.PATH_LOOKUP: PathLookup.parse,
    PacketType.PATH_NOTIFY: PathNotify.parse,
    PacketType.PATH_BROKEN: PathBroken.parse,
    PacketType.TRAFFIC: Traffic.parse,
}


async def test_daemon_frames_round_trip_and_bloom_matches_ours(tmp_path: Path) -> None:
    """Every frame a live daemon sends us re-encodes to the same bytes; its bloom
    filter for us is exactly the one we compute for its (transformed) key."""
    require(*daemon_available())
    port = free_port()
    frames: list[bytes] = []
    net = PacketNetwork(os.urandom(32), bloom_transform=subnet_bloom_transform)
    router = net.router
    original = router.handle_frame
    wanted = {PacketType.SIG_RES, PacketType.PATH_LOOKUP, PacketType.PATH_NOTIFY}
    wanted.add(PacketType.TRAFFIC)
    expected = b""
    done = asyncio.Event()

    def tap(link: object, frame: bytes) -> None:
        frames.append(frame)
        kinds = {f[0] for f in frames}
        if wanted <= kinds and any(f[1:] == expected for f in frames):
            done.set()
        original(link, frame)  # type: ignore[arg-type]

    router.handle_frame = tap  # type: ignore[method-assign]
    async with daemon_running(tmp_path / "d", listen=[f"tcp://127.0.0.1:{port}"]) as daemon:
        await asyncio.to_thread(daemon.wait_listening, port)
        expected = bytes(Bloom.of_keys(subnet_bloom_transform(daemon.public_key)))
        await net.start()
        try:
            await net.add_peer(f"tcp://127.0.0.1:{port}")
            # make the daemon look us up and open a session (lookup, traffic), and look
            # it up ourselves (its notify)
            for _ in range(10):
                net.send(daemon.public_key, b"\x00probe")
                ctl = await asyncio.create_subprocess_exec(
                    ctl_binary(YGG_05), f"-endpoint={daemon.admin}",
                    "debug_remoteGetSelf", f"key={net.public_key.hex()}",
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                )  # fmt: skip
                try:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(done.wait(), 1.5)
                finally:
                    if ctl.returncode is None:
                        ctl.kill()
                    await ctl.wait()
                if done.is_set():
                    break
        finally:
            await net.close()
    blooms = [f[1:] for f in frames if f[0] == PacketType.BLOOM_FILTER]
    assert blooms[0] == bytes(Bloom())  # a new link first gets the empty filter
    assert expected in blooms, [b.hex()[:80] for b in blooms]
    kinds = {f[0] for f in frames}
    assert wanted <= kinds, kinds
    for frame in frames:
        parse = _PARSERS.get(frame[0])
        if parse is not None:
            assert bytes(parse(frame[1:])) == frame[1:], frame.hex()  # type: ignore[call-overload]
