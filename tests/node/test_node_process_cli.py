"""`mesh up` as people run it: two node processes on loopback, driven through the CLI.

The embedded backend is used (no daemon, no root); LAN discovery is off so nothing
leaves loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require

MESH = [sys.executable, "-m", "core.cli.main"]
ROOT = Path(__file__).resolve().parents[2]


def mesh(
    data: Path, *args: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MESH, "--data-dir", str(data), *args],
        capture_output=True, text=True, input=stdin, timeout=timeout,
    )  # fmt: skip


class Up:
    def __init__(self, data: Path, *args: str) -> None:
        self.data = data
        self.log = open(data.parent / f"{data.name}.log", "w")  # noqa: SIM115 - closed in stop()
        cmd = [*MESH, "--data-dir", str(data), "up", "--no-multicast", "--backend", "embedded"]
        self.proc = subprocess.Popen([*cmd, *args], stdout=self.log, stderr=subprocess.STDOUT)
        try:
            self._wait_up()
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            self.log.close()
            raise

    def _wait_up(self) -> None:
        data = self.data
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"mesh up exited: {self.logs()}")
            out = mesh(data, "status", "--json")
            if out.returncode == 0 and json.loads(out.stdout).get("node") == "running":
                self.status = json.loads(out.stdout)
                return
            time.sleep(0.2)
        raise AssertionError(f"mesh up did not come up: {self.logs()}")

    def logs(self) -> str:
        self.log.flush()
        return (self.data.parent / f"{self.data.name}.log").read_text()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.log.close()


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Up, Up]]:
    base = tmp_path_factory.mktemp("nodes")
    web = socket.socket()
    web.bind(("127.0.0.1", 0))
    web_port = web.getsockname()[1]
    web.close()
    a = Up(base / "a", "--listen", "tcp://127.0.0.1:0", "--expose", f"{web_port}:80")
    a.web_port = web_port  # type: ignore[attr-defined]
    try:
        listen = a.status["backend_status"]["listening"][0]
        b = Up(base / "b", "--peer", listen, "--socks", "127.0.0.1:0")
        try:
            yield a, b
        finally:
            b.stop()
    finally:
        a.stop()


def _wait_ping(b: Up, target: str) -> dict[str, object]:
    for _ in range(20):
        out = mesh(b.data, "ping", "-c", "1", "-W", "1", target, "--json")
        if out.returncode == 0:
            break
    out = mesh(b.data, "ping", "-c", "3", "-i", "0.1", target, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_status_json_shows_backend_reason_and_peer(two_nodes: tuple[Up, Up]) -> None:
    a, b = two_nodes
    status = json.loads(mesh(b.data, "status", "--json").stdout)
    assert status["backend"] == "embedded"
    assert status["backend_reason"] == "embedded requested"
    peers = status["peers"]
    assert len(peers) == 1 and peers[0]["up"] and peers[0]["key"] == a.status["key"]
    assert stat.S_IMODE((b.data / "control.sock").stat().st_mode) == 0o600


def test_ping_by_mail_address_reports_rtts(two_nodes: tuple[Up, Up]) -> None:
    a, b = two_nodes
    result = _wait_ping(b, a.status["mail_address"])
    assert result["received"] == 3 and result["loss_percent"] == 0.0


@contextlib.contextmanager
def listening(node: Up, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """`mesh listen PORT` on ``node``, yielded once it says it listens; always reaped."""
    listener = subprocess.Popen(
        [*MESH, "--data-dir", str(node.data), "listen", str(port)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert listener.stderr is not None and b"listening" in listener.stderr.readline()
        yield listener
    finally:
        listener.kill()
        listener.wait()
        for pipe in (listener.stdin, listener.stdout, listener.stderr):
            if pipe is not None:
                pipe.close()


def test_connect_and_listen_carry_bytes_both_ways(two_nodes: tuple[Up, Up]) -> None:
    a, b = two_nodes
    _wait_ping(b, a.status["address"])
    with listening(a, 4100) as listener:
        assert listener.stdin is not None
        listener.stdin.write(b"from a\n")
        listener.stdin.close()
        out = mesh(b.data, "connect", a.status["address"], "4100", stdin="from b\n")
        assert out.returncode == 0, out.stderr
        assert out.stdout == "from a\n"
        assert listener.stdout is not None
        assert listener.stdout.read() == b"from b\n"
        assert listener.wait(20) == 0


def test_connect_still_sends_after_the_listener_half_closed(two_nodes: tuple[Up, Up]) -> None:
    # The listener sends and closes its side at once; the connecting side's stdin only
    # arrives later. Half-close: its data must still get through.
    a, b = two_nodes
    _wait_ping(b, a.status["address"])
    with listening(a, 4101) as listener:
        assert listener.stdin is not None
        listener.stdin.write(b"early\n")
        listener.stdin.close()
        slow_stdin = "import sys, time; time.sleep(2); sys.stdout.write('late\\n')"
        connect = subprocess.run(
            f"{sys.executable} -c \"{slow_stdin}\" | {' '.join(MESH)} --data-dir {b.data} "
            f"connect {a.status['address']} 4101",
            shell=True, capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip
        assert connect.returncode == 0, connect.stderr
        assert connect.stdout == "early\n"
        assert listener.stdout is not None
        assert listener.stdout.read() == b"late\n"


def test_socks_proxy_reaches_exposed_port_with_curl(
    two_nodes: tuple[Up, Up], tmp_path: Path
) -> None:
    require(shutil.which("curl") is not None, "curl is not installed")
    a, b = two_nodes
    (tmp_path / "index.html").write_text("hello from a's web server\n")
    web = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(a.web_port), "--bind", "127.0.0.1"],  # type: ignore[attr-defined]
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_ping(b, a.status["address"])
        socks = json.loads(mesh(b.data, "status", "--json").stdout)["services"]["forwarding"]
        listen = socks["socks5"]["listen"]
        token = Path(socks["socks5"]["password_file"]).read_text().strip()
        assert stat.S_IMODE(os.stat(socks["socks5"]["password_file"]).st_mode) == 0o600
        url = f"http://{a.status['key']}.mesh/index.html"
        for _ in range(10):
            out = subprocess.run(
                ["curl", "-s", "--max-time", "10", "--socks5-hostname", listen,
                 "--proxy-user", f"mesh:{token}", url],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            if out.returncode == 0:
                break
            time.sleep(0.5)
        assert out.stdout == "hello from a's web server\n", out
    finally:
        web.kill()
        web.wait()


def test_second_node_on_same_data_dir_is_refused(two_nodes: tuple[Up, Up]) -> None:
    a, _ = two_nodes
    out = subprocess.run(
        [*MESH, "--data-dir", str(a.data), "up", "--no-multicast", "--backend", "embedded"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2  # issue 14: refused cleanly, as a usage error
    assert "a node is already running" in out.stderr


def test_peers_add_with_bad_uri_is_a_usage_error(two_nodes: tuple[Up, Up]) -> None:
    _, b = two_nodes
    out = mesh(b.data, "peers", "add", "not-a-uri")
    assert out.returncode == 2 and "tls://" in out.stderr


def test_sigint_stops_the_node_cleanly(tmp_path: Path) -> None:
    node = Up(tmp_path / "c")
    assert node.stop() == 0
    assert not (tmp_path / "c" / "control.sock").exists()
    assert mesh(tmp_path / "c", "status").returncode == 0  # offline status still works


def test_quic_and_ws_through_flags_mesh_toml_peers_add_and_status(tmp_path: Path) -> None:
    """Whatever takes tcp:// and tls:// takes quic:// and ws://: --listen, mesh.toml's
    peers, `mesh peers add`, and `mesh status`/`mesh peers` show them."""
    c = Up(tmp_path / "c", "--no-services", "--listen", "quic://127.0.0.1:0",
           "--listen", "ws://127.0.0.1:0/ygg")  # fmt: skip
    try:
        quic_uri, ws_uri = c.status["backend_status"]["listening"]
        assert quic_uri.startswith("quic://127.0.0.1:") and ws_uri.endswith("/ygg")
        d_data = tmp_path / "d"
        d_data.mkdir(mode=0o700)
        (d_data / "mesh.toml").write_text(f'[node]\npeers = ["{ws_uri}"]\n')
        d = Up(d_data, "--no-services")
        try:
            out = mesh(d.data, "peers", "add", quic_uri)
            assert out.returncode == 0, out.stderr
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                peers = json.loads(mesh(d.data, "peers", "--json").stdout)
                if len([p for p in peers if p["up"]]) == 2:
                    break
                time.sleep(0.2)
            assert sorted(p["uri"] for p in peers if p["up"]) == sorted([quic_uri, ws_uri])
            assert {p["key"] for p in peers} == {c.status["key"]}
            human = mesh(d.data, "peers").stdout
            assert quic_uri in human and ws_uri in human
            status = json.loads(mesh(c.data, "status", "--json").stdout)
            schemes = sorted(p["uri"].split("://")[0] for p in status["peers"] if p["up"])
            assert schemes == ["quic", "ws"]
            assert set(status["backend_status"]["carriers"]) <= {"quic", "ws"}
            bad = mesh(d.data, "peers", "add", "gopher://127.0.0.1:70")
            assert bad.returncode == 2 and "quic://" in bad.stderr and "ws://" in bad.stderr
        finally:
            d.stop()
    finally:
        c.stop()
