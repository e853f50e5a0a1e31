"""PacketNetwork against real yggdrasil daemons on loopback (IfName none, no root needed)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from core.embedded import PacketNetwork
from core.embedded.carriers.quic import QUICCarrier
from core.embedded.links import make_tls_contexts
from core.embedded.network import subnet_bloom_transform
from tests.conftest import require
from tests.embedded.carrier_util import Relay
from tests.lab.lab import (
    YGG_04,
    YGG_05,
    Daemon,
    ctl_binary,
    daemon_available,
    daemon_running,
    free_port,
)

pytestmark = pytest.mark.timeout(60)


def _need_daemon() -> None:
    require(*daemon_available())


async def _eventually(check: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    """Poll ``check`` (run in a thread: it may call yggdrasilctl) until truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(check)
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def _daemon_peer_up(daemon: Daemon, key: bytes) -> bool:
    peers = daemon.ctl("getPeers")["peers"]
    return any(p.get("key") == key.hex() and p.get("up") for p in peers)


def _daemon_tree_keys(daemon: Daemon) -> dict[str, str]:
    return {e["key"]: e["parent"] for e in daemon.ctl("getTree")["tree"]}


def _root_of(tree: dict[str, str], key: str) -> str:
    seen: set[str] = set()
    while key in tree and key not in seen:
        seen.add(key)
        if tree[key] == key:
            return key
        key = tree[key]
    return ""


async def _start_ctl(daemon: Daemon, *args: str) -> asyncio.subprocess.Process:
    """A yggdrasilctl request left running in the background (killed by the caller)."""
    return await asyncio.create_subprocess_exec(
        ctl_binary(YGG_05),
        "-json",
        f"-endpoint={daemon.admin}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
    await proc.wait()


async def _daemon_lookup(daemon: Daemon, key: bytes, timeout: float = 20.0) -> Any:
    """Make ``daemon`` look ``key`` up (via debug_remoteGetSelf) until getPaths lists it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ctl = await _start_ctl(daemon, "debug_remoteGetSelf", f"key={key.hex()}")
        try:
            for _ in range(10):
                await asyncio.sleep(0.2)
                paths = await asyncio.to_thread(daemon.ctl, "getPaths")
                found = [p for p in paths["paths"] if p["key"] == key.hex()]
                if found:
                    return found
        finally:
            await _kill(ctl)
    raise AssertionError(f"daemon never found a path to {key.hex()}")


def _net() -> PacketNetwork:
    return PacketNetwork(os.urandom(32), bloom_transform=subnet_bloom_transform)


@pytest.mark.parametrize("scheme", ["tcp", "tls", "quic", "ws"])
async def test_embedded_dials_daemon_tree_and_lookups(tmp_path: Path, scheme: str) -> None:
    _need_daemon()
    port = free_port()
    received: list[tuple[bytes, bytes]] = []
    net = _net()
    net.set_handler(lambda src, data: received.append((src, data)))
    async with daemon_running(tmp_path / "d", listen=[f"{scheme}://127.0.0.1:{port}"]) as daemon:
        if scheme != "quic":  # UDP: nothing to connect to; the first dial is answered
            await asyncio.to_thread(daemon.wait_listening, port)
        await net.start()
        try:
            await net.add_peer(f"{scheme}://127.0.0.1:{port}")
            await _eventually(lambda: _daemon_peer_up(daemon, net.public_key), "daemon sees us up")
            [info] = [p for p in net.peers() if p.up]
            assert info.key == daemon.public_key and not info.inbound
            # the tree converges: both agree on the root, the lower of the two keys
            root = min(net.public_key, daemon.public_key)
            await _eventually(
                lambda: _root_of(_daemon_tree_keys(daemon), net.public_key.hex()) == root.hex(),
                "daemon's tree to contain us under the common root",
            )
            assert net.tree().root == root
            # lookups follow bloom filters: wait until ours (with our key) went out
            blooms = net.router.blooms
            await _eventually(
                lambda: (
                    blooms.is_on_tree(daemon.public_key)
                    and blooms.blooms[daemon.public_key].send.bits != 0
                ),
                "our bloom filter sent to the daemon",
            )
            # a daemon lookup for our key crosses the link and our notify comes back;
            # the daemon only floods lookups to peers it already counts as on-tree, so
            # ask again (a fresh request, a fresh lookup) until the path shows up
            paths = await _daemon_lookup(daemon, net.public_key)
            assert paths[0]["path"] == list(net.tree().coords)
            # and its session traffic is routed to us and delivered
            assert any(src == daemon.public_key for src, _ in received)
            # our own lookup for the daemon gets its notify
            net.send(daemon.public_key, b"\x00probe")
            for _ in range(50):
                if any(k == daemon.public_key for k, _ in net.tree().paths):
                    break
                await asyncio.sleep(0.1)
            assert any(k == daemon.public_key for k, _ in net.tree().paths)
        finally:
            await net.close()


@pytest.mark.parametrize("scheme", ["tcp", "tls", "quic", "ws"])
async def test_daemon_dials_embedded(tmp_path: Path, scheme: str) -> None:
    _need_daemon()
    net = _net()
    events: list[str] = []
    net.subscribe_peer_events(lambda ev: events.append(ev.kind))
    await net.start()
    try:
        uri = await net.listen(f"{scheme}://127.0.0.1:0")
        async with daemon_running(tmp_path / "d", peers=[uri]) as daemon:
            await _eventually(lambda: _daemon_peer_up(daemon, net.public_key), "daemon sees us up")
            [info] = [p for p in net.peers() if p.up]
            assert info.inbound and info.key == daemon.public_key and info.port == 1
            root = min(net.public_key, daemon.public_key)
            await _eventually(
                lambda: _root_of(_daemon_tree_keys(daemon), net.public_key.hex()) == root.hex(),
                "tree convergence",
            )
        if scheme == "quic":
            # a daemon that exits sends no CONNECTION_CLOSE: the link ends at QUIC's
            # 60 s idle timeout, as between two daemons (see test_quic_link_heals...)
            assert events[:1] == ["up"]
        else:
            await _eventually(lambda: not [p for p in net.peers() if p.up], "link down")
            assert events[:2] == ["up", "down"]
    finally:
        await net.close()


async def test_password_match_and_mismatch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _need_daemon()
    port = free_port()
    caplog.set_level(logging.WARNING, logger="core.embedded")
    good, bad = _net(), _net()
    listen = f"tcp://127.0.0.1:{port}?password=s3cret"
    async with daemon_running(tmp_path / "d", listen=[listen]) as daemon:
        await asyncio.to_thread(daemon.wait_listening, port)
        await good.start()
        await bad.start()
        try:
            await good.add_peer(f"tcp://127.0.0.1:{port}?password=s3cret&priority=4")
            await bad.add_peer(f"tcp://127.0.0.1:{port}?password=wrong")
            await _eventually(lambda: _daemon_peer_up(daemon, good.public_key), "good peer up")
            await _eventually(
                lambda: "password does not match" in caplog.text, "our refusal log line"
            )
            assert not _daemon_peer_up(daemon, bad.public_key)
            # the daemon read the priority TLV of our handshake (it keeps the larger one)
            peers = (await asyncio.to_thread(daemon.ctl, "getPeers"))["peers"]
            [entry] = [p for p in peers if p.get("key") == good.public_key.hex()]
            assert entry["priority"] == 4
            [ours] = [p for p in good.peers() if p.up]
            assert ours.priority == 4 and ours.key == daemon.public_key
            assert not [p for p in bad.peers() if p.up]
        finally:
            await good.close()
            await bad.close()


@pytest.mark.parametrize("scheme", ["tcp", "quic", "ws"])
async def test_two_daemons_reach_each_other_through_embedded(tmp_path: Path, scheme: str) -> None:
    """daemon A -- embedded -- daemon C: A's remote getSelf of C is routed by us."""
    _need_daemon()
    net = _net()
    await net.start()
    try:
        uri = await net.listen(f"{scheme}://127.0.0.1:0")
        async with (
            daemon_running(tmp_path / "a", peers=[uri]) as a,
            daemon_running(tmp_path / "c", peers=[uri]) as c,
        ):
            await _eventually(
                lambda: len([p for p in net.peers() if p.up]) == 2, "both daemons peered"
            )
            # one tree: every node ends up under the lowest key (ironwood only tells a
            # node its own and its peers' ancestries, so not everyone sees everyone)
            root = min(net.public_key, a.public_key, c.public_key).hex()
            for d in (a, c):
                await _eventually(
                    lambda d=d: _root_of(_daemon_tree_keys(d), d.public_key.hex()) == root,
                    "daemons under the common root",
                )
            # our filters towards each daemon carry the other one's (transformed) key
            blooms = net.router.blooms
            for near, far in ((a, c), (c, a)):
                await _eventually(
                    lambda near=near, far=far: (
                        near.public_key in blooms.blooms
                        and blooms.blooms[near.public_key].send.test(
                            subnet_bloom_transform(far.public_key)
                        )
                    ),
                    "bloom filters propagated through us",
                )
            # end-to-end: A's encrypted session to C and its proto request cross our router
            result = await _eventually(
                lambda: _try_ctl(a, "debug_remoteGetSelf", key=c.public_key.hex()),
                "debug_remoteGetSelf from A to C",
                timeout=30,
            )
            assert c.public_key.hex() in str(result)
            listed = await asyncio.to_thread(a.ctl, "getPaths")
            paths = {p["key"]: p["path"] for p in listed["paths"]}
            assert c.public_key.hex() in paths
    finally:
        await net.close()


def _try_ctl(daemon: Daemon, command: str, **args: str) -> dict[str, Any] | None:
    try:
        return daemon.ctl(command, **args)
    except RuntimeError:
        return None


async def test_yggdrasil_04_peer_is_refused_with_clear_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    require(os.access(YGG_04, os.X_OK), f"yggdrasil 0.4.7 not unpacked at {YGG_04}")
    caplog.set_level(logging.WARNING, logger="core.embedded")
    net = _net()
    await net.start()
    try:
        uri = await net.listen("tcp://127.0.0.1:0")
        async with daemon_running(tmp_path / "old", peers=[uri], binary=YGG_04):
            await _eventually(lambda: "Yggdrasil 0.4 protocol" in caplog.text, "0.4 refusal")
        assert not [p for p in net.peers() if p.up]
        assert "upgrade the remote node to Yggdrasil 0.5" in caplog.text
    finally:
        await net.close()


async def test_embedded_nodes_route_through_a_daemon(tmp_path: Path) -> None:
    """embedded X -- daemon -- embedded Y: lookups and traffic forwarded by yggdrasil-go."""
    _need_daemon()
    port = free_port()
    x, y = _net(), _net()
    got: list[tuple[bytes, bytes]] = []
    y.set_handler(lambda src, data: got.append((src, data)))
    async with daemon_running(tmp_path / "d", listen=[f"tls://127.0.0.1:{port}"]) as daemon:
        await asyncio.to_thread(daemon.wait_listening, port)
        for net in (x, y):
            await net.start()
            await net.add_peer(f"tls://127.0.0.1:{port}")
        try:
            root = min(x.public_key, y.public_key, daemon.public_key)
            await _eventually(
                lambda: x.tree().root == root and y.tree().root == root, "one tree via the daemon"
            )
            deadline = time.monotonic() + 20
            while (x.public_key, b"via daemon") not in got:
                assert time.monotonic() < deadline, "no packet crossed the daemon"
                x.send(y.public_key, b"via daemon")  # the first waits for a lookup
                await asyncio.sleep(0.3)
            [path] = [p for k, p in x.tree().paths if k == y.public_key]
            assert path == y.tree().coords
            # Y leaves: the daemon has no next hop for X's traffic and sends PathBroken
            # back along X's coordinates; X marks the path broken (and looks it up again)
            await y.close()
            info = x.router.pathfinder.paths[y.public_key]
            for _ in range(60):
                if info.broken:
                    break
                x.send(y.public_key, b"after Y left")
                await asyncio.sleep(0.2)
            assert info.broken
        finally:
            await x.close()
            await y.close()


@pytest.mark.parametrize("scheme", ["tcp", "quic", "ws"])
async def test_static_peer_redials_after_daemon_restart(tmp_path: Path, scheme: str) -> None:
    _need_daemon()
    port = free_port()
    # a daemon that exits sends no QUIC CONNECTION_CLOSE: the link is found dead by its
    # unanswered keepalive (20 + 15 s by default, shortened here)
    net = PacketNetwork(
        os.urandom(32),
        bloom_transform=subnet_bloom_transform,
        carriers={"quic": QUICCarrier(keepalive=1.0, answer_within=2.0)},
    )
    events: list[str] = []
    net.subscribe_peer_events(lambda ev: events.append(ev.kind))
    await net.start()
    try:
        listen = [f"{scheme}://127.0.0.1:{port}"]
        async with daemon_running(tmp_path / "d", listen=listen) as daemon:
            if scheme != "quic":
                await asyncio.to_thread(daemon.wait_listening, port)
            await net.add_peer(f"{scheme}://127.0.0.1:{port}")
            await _eventually(lambda: _daemon_peer_up(daemon, net.public_key), "first link")
            key = daemon.conf["PrivateKey"]
        [down] = await _eventually(
            lambda: [p for p in net.peers() if not p.up and p.last_error], "link down"
        )
        assert down.key is None and down.uri == f"{scheme}://127.0.0.1:{port}"
        # same key, same port: the static peer comes back by itself (1 s, 2 s, ... back-off)
        async with daemon_running(tmp_path / "d2", listen=listen, private_key=key) as again:
            await _eventually(lambda: _daemon_peer_up(again, net.public_key), "redialled link")
        assert events[:3] == ["up", "down", "up"]
    finally:
        await net.close()


async def _ctl_quiet(daemon: Daemon, request: str, **args: str) -> None:
    """A yggdrasilctl request that answers ``{}`` on success (addPeer, removePeer)."""
    proc = await _start_ctl(daemon, request, *(f"{k}={v}" for k, v in args.items()))
    try:
        async with asyncio.timeout(20):
            out, err = await proc.communicate()
    finally:
        await _kill(proc)
    assert proc.returncode == 0, f"yggdrasilctl {request}: {out!r} {err!r}"


async def _tree_formed(net: PacketNetwork, daemon: Daemon) -> bool:
    """Both ends agree on the root of the tree holding the link (not just "link up")."""
    ours = net.tree().root
    if ours not in (net.public_key, daemon.public_key):
        return False
    tree = await asyncio.to_thread(_daemon_tree_keys, daemon)
    return _root_of(tree, net.public_key.hex()) == ours.hex()


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["tcp", "tls", "quic", "ws"])
@pytest.mark.parametrize("dialler", ["embedded", "daemon"])
async def test_ten_link_ups_form_a_tree_every_time(
    tmp_path: Path, scheme: str, dialler: str
) -> None:
    """Each carrier, each direction: 10 fresh link-ups with a real 0.5 daemon, and every
    one forms a tree (a link that is "up" without routes is the bug this guards)."""
    _need_daemon()
    port = free_port()
    took: list[float] = []
    async with daemon_running(tmp_path / "d", listen=[f"{scheme}://127.0.0.1:{port}"]) as daemon:
        if scheme != "quic":  # UDP: nothing to connect to
            await asyncio.to_thread(daemon.wait_listening, port)
        for attempt in range(10):
            net = _net()
            await net.start()
            try:
                start = time.monotonic()
                if dialler == "embedded":
                    await net.add_peer(f"{scheme}://127.0.0.1:{port}")
                else:
                    uri = await net.listen(f"{scheme}://127.0.0.1:0")
                    await _ctl_quiet(daemon, "addPeer", uri=uri)
                deadline = start + 30
                while not await _tree_formed(net, daemon):
                    assert time.monotonic() < deadline, (
                        f"link-up {attempt + 1}: no tree; peers {net.peers()}\n{daemon.log_tail()}"
                    )
                    await asyncio.sleep(0.05)
                took.append(time.monotonic() - start)
                if dialler == "daemon":
                    await _ctl_quiet(daemon, "removePeer", uri=uri)
            finally:
                await net.close()
            await _eventually(lambda: not daemon.peers_up(), "the daemon's link down")
    took.sort()
    print(f"{dialler} dials over {scheme}: tree in median {took[5]:.2f} s, max {took[-1]:.2f} s")


def _tls_terminator(backend_port: int) -> Relay:
    """A TLS-terminating reverse proxy on 127.0.0.1 in front of a ws:// listener (the
    deployment yggdrasil-go documents for wss://)."""
    return Relay(("127.0.0.1", backend_port), ssl=make_tls_contexts(os.urandom(32))[0])


@pytest.mark.parametrize("dialler", ["embedded", "daemon"])
async def test_wss_through_a_tls_terminating_proxy_both_ways(tmp_path: Path, dialler: str) -> None:
    """wss:// dials against a ws:// listener behind TLS: ours against the daemon's
    listener, the daemon's against ours; the tree forms across."""
    _need_daemon()
    net = _net()
    await net.start()
    try:
        if dialler == "embedded":
            port = free_port()
            async with (
                daemon_running(tmp_path / "d", listen=[f"ws://127.0.0.1:{port}"]) as daemon,
                _tls_terminator(port) as terminator,
            ):
                tls_port = terminator.port
                await asyncio.to_thread(daemon.wait_listening, port)
                await net.add_peer(f"wss://127.0.0.1:{tls_port}/")
                await _eventually(lambda: _daemon_peer_up(daemon, net.public_key), "link up")
                root = min(net.public_key, daemon.public_key)
                await _eventually(
                    lambda: _root_of(_daemon_tree_keys(daemon), net.public_key.hex()) == root.hex(),
                    "tree convergence",
                )
        else:
            bound = await net.listen("ws://127.0.0.1:0")
            async with _tls_terminator(int(bound.rsplit(":", 1)[1])) as terminator:
                peers = [f"wss://127.0.0.1:{terminator.port}"]
                async with daemon_running(tmp_path / "d", peers=peers) as daemon:
                    await _eventually(lambda: _daemon_peer_up(daemon, net.public_key), "link up")
                    [info] = [p for p in net.peers() if p.up]
                    assert info.inbound and info.key == daemon.public_key
    finally:
        await net.close()
