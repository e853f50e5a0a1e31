"""The real-daemon lab: hosts as network namespaces, veth links, a yggdrasil daemon each.

    with Lab("two") as lab:
        a, b = lab.host("a"), lab.host("b")
        lab.link(a, b)
        da = a.start_daemon(listen=[a.listen_uri(b, 7001)])
        db = b.start_daemon(peers=[a.peer_uri(b, 7001)])
        lab.wait_peered(da, db)

Names: namespaces ``lb-<lab><tag>-<host>``, veths ``lb-<lab><tag>-<a><b>`` (``tag``: 3
characters from the pid, so concurrent runs never collide), the TUN ``lb-tun`` inside
each namespace. Everything made is removed on close (also after a failure): daemons by
pid, any process left in a namespace (``ip netns pids``), the namespaces (their veths go
with them) and the scratch directory. Each namespace is registered in
``/run/meshsuite-lab/`` with its owner's pid; a later lab removes those whose owner
died (a killed run).

Sockets inside a host are made by a worker thread that entered the namespace
(:class:`core.backends.yggdrasil.netns.NetNamespace`), so the test process can hold
sockets in several hosts at once; in-process nodes get ``[yggdrasil] netns`` for the same.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any

from core.backends.yggdrasil.netns import NetNamespace
from core.config import NodeConfig

__all__ = [
    "TAG",
    "YGG_04",
    "YGG_05",
    "Daemon",
    "Host",
    "Lab",
    "LabError",
    "MeshUp",
    "NodeProcess",
    "lab_available",
    "mesh_cli",
]

TAG = "lb"
YGG_05 = "/usr/sbin/yggdrasil"
YGG_04 = "/opt/meshsuite/yggdrasil-0.4.7/usr/sbin/yggdrasil"
TUN = f"{TAG}-tun"
REPO = Path(__file__).resolve().parents[2]


OWNERS = Path("/run/meshsuite-lab")  # one file per lab namespace: the owner's pid


def _pid_tag(pid: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    n = pid % 36**3
    return digits[n // 1296] + digits[n // 36 % 36] + digits[n % 36]


class LabError(RuntimeError):
    pass


def lab_available(binary: str = YGG_05) -> tuple[bool, str]:
    """Whether the lab can run here, and if not why (for ``require``)."""
    if os.geteuid() != 0:
        return False, "the lab needs root (network namespaces, TUN)"
    if shutil.which("ip") is None:
        return False, "the lab needs iproute2 (`ip`)"
    if not os.path.exists(binary):
        return False, f"the lab needs the yggdrasil daemon at {binary}"
    if not os.path.exists("/dev/net/tun"):
        return False, "the lab needs /dev/net/tun"
    return True, ""


def ctl_binary(binary: str) -> str:
    return str(Path(binary).with_name("yggdrasilctl"))


def _run(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _wait(what: str, probe: Any, timeout: float = 30.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (LabError, OSError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise LabError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


@dataclass
class Daemon:
    """A yggdrasil daemon the lab runs in a host (not managed by the suite)."""

    host: Host
    binary: str
    config_path: Path
    log_path: Path
    admin_path: Path
    proc: subprocess.Popen[bytes] | None = None
    key: str = ""
    address: ipaddress.IPv6Address = field(default=ipaddress.IPv6Address(0))

    @property
    def admin(self) -> str:
        return f"unix://{self.admin_path}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.host.ns,
                self.binary,
                "-useconffile",
                str(self.config_path),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.host.lab._pids.add(self.proc.pid)
        info = _wait(f"{self.host.ns} daemon admin", self._self_if_running, timeout=20)
        self.key = info["key"]
        self.address = ipaddress.IPv6Address(info["address"])
        _wait(f"{self.host.ns} TUN address", lambda: self.host.has_address(self.address))

    def _self_if_running(self) -> dict[str, Any] | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise LabError(f"daemon in {self.host.ns} exited:\n{self.log_tail()}")
        try:
            return self.ctl("getSelf")
        except LabError:
            return None

    def ctl(self, request: str, **args: str) -> dict[str, Any]:
        cmd = [ctl_binary(self.binary), "-json", f"-endpoint={self.admin}", request]
        cmd += [f"{k}={v}" for k, v in args.items()]
        proc = _run(*cmd, check=False, timeout=10)
        if proc.returncode != 0:
            raise LabError(f"yggdrasilctl {request}: {proc.stdout.strip()} {proc.stderr.strip()}")
        value = json.loads(proc.stdout)
        assert isinstance(value, dict)
        return value

    def peers_up(self) -> list[dict[str, Any]]:
        peers = self.ctl("getPeers").get("peers") or []
        return [p for p in peers if p.get("up", True)]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.host.lab._pids.discard(self.proc.pid)
        self.proc = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class NodeProcess:
    """A node running as its own process in a host (see ``tests/lab/node_runner.py``)."""

    proc: subprocess.Popen[str]
    data_dir: Path
    info: dict[str, Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)

    def wait_ready(self, timeout: float) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if not ready:
                continue
            line = self.proc.stdout.readline()
            if not line:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise LabError(f"node process exited before READY:\n{err[-3000:]}")
            self.lines.append(line.rstrip())
            if line.startswith("READY "):
                self.info = json.loads(line[len("READY ") :])
                return
        raise LabError(f"node process not READY within {timeout:g} s")

    def stop(self, timeout: float = 20) -> str:
        """Close its stdin (it closes its node and exits); returns its stderr."""
        if self.proc.returncode is not None:
            return ""
        try:
            out, err = self.proc.communicate(input="", timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        self.lines += out.splitlines()
        return err


def mesh_cli(data_dir: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The ``mesh`` CLI of this checkout against the node of ``data_dir``."""
    return subprocess.run(
        [sys.executable, "-m", "core.cli.main", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


@dataclass
class MeshUp:
    """A ``mesh up`` process in a host; :meth:`stop` sends SIGTERM like Ctrl-C would."""

    proc: subprocess.Popen[str]
    data_dir: Path
    stderr: str = ""

    def wait_announced(self, timeout: float) -> None:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stderr], [], [], 0.2)
            if not ready:
                continue
            line = self.proc.stderr.readline()
            if not line:
                break
            self.stderr += line
            if line.startswith("mesh node up:"):
                return
        raise LabError(f"mesh up did not come up within {timeout:g} s:\n{self.stderr}")

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        self.stderr += err or ""
        return self.proc.returncode


@dataclass
class Host:
    lab: Lab
    name: str
    ns: str
    dir: Path
    links: dict[str, tuple[str, ipaddress.IPv6Address]] = field(default_factory=dict)
    daemon: Daemon | None = None
    _netns: NetNamespace | None = None

    @property
    def ns_path(self) -> str:
        return f"/var/run/netns/{self.ns}"

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return _run("ip", "netns", "exec", self.ns, *cmd, check=check, timeout=timeout)

    @property
    def netns(self) -> NetNamespace:
        if self._netns is None:
            self._netns = NetNamespace(self.ns_path)
        return self._netns

    def socket(self, family: int, kind: int, proto: int = 0) -> socket.socket:
        """A socket created inside this host's namespace (it stays there)."""
        return self.netns.socket(family, kind, proto)

    def has_address(self, address: ipaddress.IPv6Address) -> bool:
        entry = self.netns.find(address)
        return entry is not None and entry.usable

    def link_address(self, peer: Host) -> ipaddress.IPv6Address:
        return self.links[peer.name][1]

    def link_ifname(self, peer: Host) -> str:
        return self.links[peer.name][0]

    def listen_uri(self, peer: Host, port: int, scheme: str = "tls") -> str:
        """A Listen URI on this host's end of the link to ``peer``."""
        return f"{scheme}://[{self.link_address(peer)}]:{port}"

    def peer_uri(self, peer: Host, port: int, scheme: str = "tls") -> str:
        """The URI ``peer`` dials to reach this host's listener on their link."""
        return self.listen_uri(peer, port, scheme)

    def start_daemon(
        self,
        *,
        listen: list[str] | None = None,
        peers: list[str] | None = None,
        binary: str = YGG_05,
    ) -> Daemon:
        gen = _run(binary, "-genconf", "-json")
        config = json.loads(gen.stdout)
        admin_path = self.dir / "admin.sock"
        config.update(
            Listen=listen or [],
            Peers=peers or [],
            MulticastInterfaces=[],
            AdminListen=f"unix://{admin_path}",
            IfName=TUN,
        )
        config_path = self.dir / "yggdrasil.conf"
        config_path.write_text(json.dumps(config, indent=2))
        config_path.chmod(0o600)
        daemon = Daemon(self, binary, config_path, self.dir / "daemon.log", admin_path)
        daemon.start()
        self.daemon = daemon
        return daemon

    def node_config(self, **overrides: Any) -> NodeConfig:
        """A config for a node in this host: attached to its daemon unless managed=True."""
        ygg = {"netns": self.ns_path, "poll_interval": 0.3}
        ygg.update(overrides.pop("yggdrasil", {}))
        data_dir = overrides.pop("data_dir", None) or Path(
            tempfile.mkdtemp(prefix=f"node-{self.name}-", dir=self.dir)
        )
        base: dict[str, Any] = {
            "data_dir": data_dir,
            "backend": "yggdrasil",
            "services": MappingProxyType({"yggdrasil": MappingProxyType(ygg)}),
        }
        if not overrides.get("managed") and self.daemon is not None:
            base["admin_endpoint"] = self.daemon.admin
        base.update(overrides)
        return NodeConfig(**base)

    def spawn(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """A Python module from this repo running inside the host (stdout piped)."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, *args],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.lab._pids.add(proc.pid)
        return proc

    def node_process(self, *args: str, timeout: float = 60) -> NodeProcess:
        """``python -m tests.lab.node_runner ARGS`` in this host, once it printed READY."""
        data_dir = Path(tempfile.mkdtemp(prefix=f"proc-{self.name}-", dir=self.dir))
        proc = self.spawn("-m", "tests.lab.node_runner", "--data-dir", str(data_dir), *args)
        node = NodeProcess(proc, data_dir)
        try:
            node.wait_ready(timeout)
        except BaseException:
            node.stop()
            raise
        return node

    def mesh_up(self, data_dir: Path, *args: str, timeout: float = 60) -> MeshUp:
        """``mesh --data-dir D up ARGS`` inside this host, once it announced itself.

        For the yggdrasil backend pass e.g. ``--backend yggdrasil --managed --if-name
        lb-tun --no-services``; the control socket is ``D/control.sock`` (use
        :func:`mesh_cli` from any namespace: it is a Unix socket)."""
        proc = self.spawn("-m", "core.cli.main", "--data-dir", str(data_dir), "up", *args)
        up = MeshUp(proc, data_dir)
        try:
            up.wait_announced(timeout)
        except BaseException:
            up.stop()
            raise
        return up

    def close(self) -> None:
        if self._netns is not None:
            self._netns.close()
            self._netns = None


class Lab:
    """Namespaces, links and daemons for one test module; a context manager."""

    def __init__(self, name: str) -> None:
        if not name.isalnum() or len(name) > 5:
            raise ValueError("a lab name is 1-5 letters/digits (interface names ≤ 15 chars)")
        self.name = name
        # Two runs on one machine (a developer and CI, or two helpers) must not collide:
        # a 3-character tag from the pid makes the names this process's own, and each
        # namespace is registered with its owner's pid so a later run removes it once
        # that owner is gone.
        self.prefix = f"{TAG}-{name}{_pid_tag(os.getpid())}-"
        self.hosts: dict[str, Host] = {}
        self._pids: set[int] = set()
        self._subnet = 0
        self._remove_stale()
        self.dir = Path(tempfile.mkdtemp(prefix=f"{TAG}-{name}-"))

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _namespaces(self) -> list[str]:
        out = _run("ip", "netns", "list", check=False).stdout
        return [line.split()[0] for line in out.splitlines() if line.startswith(self.prefix)]

    @staticmethod
    def _remove_stale() -> None:
        """Namespaces of labs whose process died without cleaning up."""
        if not OWNERS.is_dir():
            return
        for record in OWNERS.glob(f"{TAG}-*"):
            try:
                owner_line, _, scratch = record.read_text().partition("\n")
                owner = int(owner_line)
                os.kill(owner, 0)
                continue  # its owner still runs
            except ProcessLookupError:
                pass
            except (OSError, ValueError):
                continue
            Lab._kill_namespace_pids(record.name)
            _run("ip", "netns", "del", record.name, check=False)
            if Path(scratch).name.startswith(f"{TAG}-"):
                shutil.rmtree(scratch, ignore_errors=True)
            record.unlink(missing_ok=True)

    @staticmethod
    def _kill_namespace_pids(ns: str) -> None:
        pids = _run("ip", "netns", "pids", ns, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)

    def host(self, name: str) -> Host:
        if len(name) != 1 or not name.isalnum():
            raise ValueError("a host name is one letter or digit")
        ns = f"{self.prefix}{name}"
        OWNERS.mkdir(parents=True, exist_ok=True)
        (OWNERS / ns).write_text(f"{os.getpid()}\n{self.dir}")
        _run("ip", "netns", "add", ns)
        host = Host(self, name, ns, self.dir / name)
        self.hosts[name] = host  # registered first: close() removes it even if setup fails
        host.dir.mkdir()
        host.run("ip", "link", "set", "lo", "up")
        return host

    def link(self, a: Host, b: Host) -> tuple[ipaddress.IPv6Address, ipaddress.IPv6Address]:
        """A veth pair between ``a`` and ``b`` with ULA addresses fd6c:62::/48-style /64s."""
        self._subnet += 1
        net = ipaddress.IPv6Network(f"fd6c:6200:0:{self._subnet:x}::/64")  # one per link
        ifa, ifb = f"{self.prefix}{a.name}{b.name}", f"{self.prefix}{b.name}{a.name}"
        _run(
            "ip",
            "link",
            "add",
            ifa,
            "netns",
            a.ns,
            "type",
            "veth",
            "peer",
            "name",
            ifb,
            "netns",
            b.ns,
        )
        addr_a, addr_b = net[1], net[2]
        for host, ifname, addr in ((a, ifa, addr_a), (b, ifb, addr_b)):
            host.run("ip", "-6", "addr", "add", f"{addr}/64", "dev", ifname, "nodad")
            host.run("ip", "link", "set", ifname, "up")
            host.links[(b if host is a else a).name] = (ifname, addr)
        return addr_a, addr_b

    def wait_peered(self, *daemons: Daemon, count: int = 1, timeout: float = 30) -> None:
        for daemon in daemons:
            _wait(
                f"{daemon.host.ns} to have {count} peer(s) up",
                lambda d=daemon: len(d.peers_up()) >= count,
                timeout=timeout,
                interval=0.2,
            )

    def wait_reachable(self, src: Host, dst: ipaddress.IPv6Address, timeout: float = 30) -> None:
        """Until ``src`` gets an ICMPv6 echo reply from ``dst`` over the mesh."""
        _wait(
            f"{dst} reachable from {src.ns}",
            lambda: src.run("ping", "-c1", "-W1", str(dst), check=False).returncode == 0,
            timeout=timeout,
            interval=0.2,
        )

    def close(self) -> None:
        errors: list[str] = []
        for host in self.hosts.values():
            if host.daemon is not None:
                try:
                    host.daemon.stop()
                except (OSError, subprocess.SubprocessError) as exc:
                    errors.append(f"{host.ns}: {exc}")
            host.close()
        for pid in list(self._pids):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self._pids.clear()
        for ns in {*self._namespaces(), *(h.ns for h in self.hosts.values())}:
            self._kill_namespace_pids(ns)
            _run("ip", "netns", "del", ns, check=False)
            (OWNERS / ns).unlink(missing_ok=True)
        self.hosts.clear()
        shutil.rmtree(self.dir, ignore_errors=True)
        if errors:
            raise LabError("; ".join(errors))
