"""Managed mode: the suite writes the daemon's config from its own key, runs, watches
and stops the real daemon (0.5.12 and 0.4.7), and explains every way that can fail."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.backends.yggdrasil.daemon import has_cap_net_admin
from core.errors import MeshError
from core.identity import KEY_FILE_NAME, Identity, load_or_create_identity
from core.node import Node
from tests.lab.fixtures import LINK_PORT, echo_handler, finish, open_node, require_lab
from tests.lab.lab import YGG_04, YGG_05, Host, Lab

pytestmark = pytest.mark.lab
PORT = 4200
SETPRIV_NO_NET_ADMIN = ["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin"]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_lab(YGG_05)
    with Lab("mgd") as lab:
        a, b = lab.host("a"), lab.host("b")
        lab.link(a, b)
        yield lab


def managed(host: Host, data_dir: Path, binary: str = YGG_05, **kw: object) -> dict[str, object]:
    return {
        "managed": True,
        "data_dir": data_dir,
        "yggdrasil_binary": binary,
        "if_name": "lb-tun",
        **kw,
    }


async def _pair(lab: Lab, tmp: Path, binary: str) -> tuple[Node, Node, Identity, Identity]:
    a, b = lab.hosts["a"], lab.hosts["b"]
    ida, _ = load_or_create_identity(tmp / "a")  # node.key on disk: 0.5 reads it directly
    idb = Identity.generate()  # no key file: the config carries PrivateKey
    na = await open_node(
        a, ida, **managed(a, tmp / "a", binary, listen=(a.listen_uri(b, LINK_PORT),))
    )
    try:
        nb = await open_node(
            b, idb, **managed(b, tmp / "b", binary, peers=(a.peer_uri(b, LINK_PORT),))
        )
    except BaseException:
        await na.close()
        raise
    return na, nb, ida, idb


async def _echo_roundtrip(client: Node, server: Node, port: int) -> dict[str, str]:
    reader, writer = await client.open_connection(server.address, port, timeout=20)
    hello = json.loads(await asyncio.wait_for(reader.readline(), 20))
    writer.write(b"ping")
    assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
    await finish(reader, writer)
    assert isinstance(hello, dict)
    return hello


async def test_managed_pair_uses_our_keys_and_carries_traffic(lab: Lab, tmp_path: Path) -> None:
    na, nb, ida, idb = await _pair(lab, tmp_path, YGG_05)
    async with na, nb:
        assert na.key == ida.public_key and nb.key == idb.public_key
        assert na.identity is ida  # the daemon runs with our key: the identity is kept
        conf_a = tmp_path / "a" / "yggdrasil" / "yggdrasil.conf"
        assert oct(conf_a.stat().st_mode & 0o777) == "0o600"
        cfg_a = json.loads(conf_a.read_text())
        assert cfg_a["PrivateKeyPath"] == str(tmp_path / "a" / KEY_FILE_NAME)
        assert "PrivateKey" not in cfg_a and cfg_a["MulticastInterfaces"] == []
        cfg_b = json.loads((tmp_path / "b" / "yggdrasil" / "yggdrasil.conf").read_text())
        assert cfg_b["PrivateKey"] == idb.to_yggdrasil_hex()
        assert cfg_b["AdminListen"] == f"unix://{tmp_path}/b/yggdrasil/admin.sock"
        await na.start_server(echo_handler, PORT)
        hello = await _echo_roundtrip(nb, na, PORT)
        assert hello == {"peer": str(nb.address), "peer_key": idb.public_key.hex()}
        status = await na.status()
        assert status["identity"] == "own"
        backend = status["backend_status"]
        assert backend["mode"] == "managed" and backend["daemon"]["build_version"] == "0.5.12"
        assert [p["key"] for p in status["peers"]] == [idb.public_key.hex()]
        pid = backend["daemon_pid"]
        log_text = (tmp_path / "a" / "yggdrasil" / "daemon.log").read_text()
        assert "Your public key is " + ida.public_key.hex() in log_text
    with pytest.raises(ProcessLookupError):  # stopped on close
        os.kill(pid, 0)


async def test_managed_0_4_7_pair(lab: Lab, tmp_path: Path) -> None:
    require_lab(YGG_04)
    na, nb, ida, _idb = await _pair(lab, tmp_path, YGG_04)
    async with na, nb:
        cfg = json.loads((tmp_path / "a" / "yggdrasil" / "yggdrasil.conf").read_text())
        assert cfg["PublicKey"] == ida.public_key.hex()  # 0.4 keeps both halves
        assert cfg["PrivateKey"] == ida.to_yggdrasil_hex()
        await nb.start_server(echo_handler, PORT + 1)
        hello = await _echo_roundtrip(na, nb, PORT + 1)
        assert hello["peer_key"] == ida.public_key.hex()
        status = await nb.status()
        assert status["backend_status"]["daemon"]["generation"] == "0.4"
        assert (await nb.ping(na.address, count=1, timeout=5))[0] is not None


async def test_a_second_node_on_the_same_data_dir_is_refused(lab: Lab, tmp_path: Path) -> None:
    a = lab.hosts["a"]
    ident = Identity.generate()
    async with await open_node(a, ident, **managed(a, tmp_path)):
        with pytest.raises(MeshError, match=r"already managed by another `mesh up`"):
            await open_node(a, ident, **managed(a, tmp_path))


async def test_a_daemon_left_by_a_crashed_node_is_replaced(lab: Lab) -> None:
    """The node process dies (SIGKILL) and leaves its daemon running; the next node on
    that data dir stops the orphan and starts its own."""
    a = lab.hosts["a"]
    runner = a.node_process("--managed", "--binary", YGG_05, "--if-name", "lb-tun")
    data_dir = runner.data_dir
    orphan = int((data_dir / "yggdrasil" / "daemon.pid").read_text())
    os.kill(runner.proc.pid, signal.SIGKILL)
    runner.stop()
    assert Path(f"/proc/{orphan}").exists()  # still running without its node
    ident, _ = load_or_create_identity(data_dir)
    async with await open_node(a, ident, **managed(a, data_dir)) as node:
        assert node.key.hex() == runner.info["key"]
        new_pid = int((data_dir / "yggdrasil" / "daemon.pid").read_text())
        assert new_pid != orphan
        for _ in range(100):
            if (
                not Path(f"/proc/{orphan}/cmdline").exists()
                or not Path(f"/proc/{orphan}/cmdline").read_bytes()
            ):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the orphaned daemon is still running")


async def test_missing_binary_says_what_to_install(lab: Lab, tmp_path: Path) -> None:
    a = lab.hosts["a"]
    with pytest.raises(MeshError, match="apt install yggdrasil"):
        await open_node(
            a, Identity.generate(), **managed(a, tmp_path, binary="/nonexistent/yggdrasil")
        )


async def test_a_daemon_that_exits_at_once_shows_its_log(lab: Lab, tmp_path: Path) -> None:
    a = lab.hosts["a"]
    bad = managed(a, tmp_path, if_name="lb-name-far-too-long-for-linux")
    with pytest.raises(MeshError, match="exited at once") as err:
        await open_node(a, Identity.generate(), **bad)
    text = str(err.value)
    assert "last output" in text and "panic: failed to create TUN" in text
    assert "check if_name" in text and "goroutine" not in text


def test_cap_net_admin_parsing() -> None:
    assert has_cap_net_admin("Name:\tx\nCapEff:\t000001ffffffffff\n")
    assert not has_cap_net_admin("CapEff:\t000001fffeffefff\n")
    assert not has_cap_net_admin("nothing here")


def test_without_cap_net_admin_the_error_names_the_privilege(tmp_path: Path) -> None:
    """A real process without CAP_NET_ADMIN (dropped from its bounding set)."""
    require_lab(YGG_05)
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from core.config import NodeConfig\n"
        "from core.identity import Identity\n"
        "from core.node import Node\n"
        "from core.errors import MeshError\n"
        "cfg = NodeConfig(data_dir=Path(sys.argv[1]), backend='yggdrasil', managed=True,\n"
        "                 yggdrasil_binary=sys.argv[2])\n"
        "try:\n"
        "    asyncio.run(Node.open(cfg, Identity.generate()))\n"
        "except MeshError as exc:\n"
        "    print(exc); sys.exit(3)\n"
    )
    proc = subprocess.run(
        [*SETPRIV_NO_NET_ADMIN, sys.executable, "-c", script, str(tmp_path), YGG_05],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 3, proc.stderr
    assert "CAP_NET_ADMIN" in proc.stdout and "root" in proc.stdout


async def test_managed_daemon_is_restarted_after_a_crash(lab: Lab, tmp_path: Path) -> None:
    """SIGKILL the managed daemon: the supervisor restarts it, services are rebound
    to the new TUN, and a peer reaches them again."""
    na, nb, _ida, _idb = await _pair(lab, tmp_path, YGG_05)
    async with na, nb, na.events.subscribe() as events:
        await na.start_server(echo_handler, PORT + 2)
        await _echo_roundtrip(nb, na, PORT + 2)
        assert na.backend.daemon is not None  # type: ignore[attr-defined]
        old_pid = na.backend.daemon.pid  # type: ignore[attr-defined]
        os.kill(old_pid, signal.SIGKILL)
        kinds: list[str] = []
        while "daemon.restarted" not in kinds:
            event = await asyncio.wait_for(events.get(), 30)
            assert event is not None
            kinds.append(event.kind)
        assert "daemon.exited" in kinds
        assert na.backend.daemon.pid != old_pid  # type: ignore[attr-defined]
        for _ in range(100):  # until the peering is back
            if any(p.up for p in await na.peers()):
                break
            await asyncio.sleep(0.2)
        hello = await _echo_roundtrip(nb, na, PORT + 2)
        assert hello["peer_key"] == nb.key.hex()
