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

Daemons outside any host (:func:`loopback_daemon`, :func:`running_daemon`,
:func:`daemon_running`) run in the test process's namespace with ``IfName: none`` on
loopback: no root and no TUN needed. :meth:`Host.link_root` joins a host to the test
process's namespace with a veth, so in-process nodes can peer with a host's daemon.

Sockets inside a host are made by a worker thread that entered the namespace
(:class:`core.backends.yggdrasil.netns.NetNamespace`), so the test process can hold
sockets in several hosts at once; in-process nodes get ``[yggdrasil] netns`` for the same.
"""

from __future__ import annotations

import asyncio
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
from collections.abc import AsyncIterator, Iterator
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
    "RootLink",
    "daemon_available",
    "daemon_running",
    "free_port",
    "lab_available",
    "loopback_daemon",
    "mesh_cli",
    "running_daemon",
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


def daemon_available(binary: str = YGG_05) -> tuple[bool, str]:
    """Whether a daemon outside the lab's hosts (loopback, no TUN) can run here."""
    if not os.access(binary, os.X_OK) or not os.access(ctl_binary(binary), os.X_OK):
        return False, f"the yggdrasil daemon and yggdrasilctl at {Path(binary).parent}"
    return True, ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def daemon_config(
    binary: str,
    admin_path: Path,
    *,
    if_name: str,
    listen: list[str] | None = None,
    peers: list[str] | None = None,
    private_key: str | None = None,
    node_info: dict[str, Any] | None = None,
    multicast: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``yggdrasil -genconf -json`` with the lab's settings: no multicast unless given,
    own admin socket, the given TUN name (``none``: no TUN), key and links."""
    config: dict[str, Any] = json.loads(_run(binary, "-genconf", "-json").stdout)
    if private_key is not None:
        config["PrivateKey"] = private_key
    config.update(
        Listen=listen or [],
        Peers=peers or [],
        MulticastInterfaces=multicast or [],
        AdminListen=f"unix://{admin_path}",
        IfName=if_name,
    )
    if node_info is not None:
        config["NodeInfo"] = node_info
    config.pop("LinkLocalTCPPort", None)
    return config


@dataclass
class Daemon:
    """A yggdrasil daemon the lab runs: in a host, or (``host`` None) in the test
    process's namespace (see :func:`loopback_daemon`)."""

    host: Host | None
    binary: str
    config_path: Path
    log_path: Path
    admin_path: Path
    conf: dict[str, Any] = field(default_factory=dict)
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

    @property
    def public_key(self) -> bytes:
        return bytes.fromhex(self.conf["PrivateKey"])[32:]

    @property
    def where(self) -> str:
        return self.host.ns if self.host is not None else f"{self.config_path.parent}"

    def start(self, timeout: float = 20) -> None:
        argv = [self.binary, "-useconffile", str(self.config_path)]
        if self.host is not None:
            argv = ["ip", "netns", "exec", self.host.ns, *argv]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        if self.host is not None:
            self.host.lab._procs[self.proc.pid] = self.proc
        info = _wait(f"{self.where} daemon admin", self._self_if_running, timeout=timeout)
        self.key = info["key"]
        self.address = ipaddress.IPv6Address(info["address"])
        if self.host is not None and self.conf.get("IfName") != "none":
            _wait(f"{self.host.ns} TUN address", lambda: self.host.has_address(self.address))

    def _self_if_running(self) -> dict[str, Any] | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise LabError(f"daemon in {self.where} exited:\n{self.log_tail()}")
        try:
            return self.ctl("getSelf")
        except LabError:
            return None

    def ctl(self, request: str, **args: str) -> dict[str, Any]:
        """``yggdrasilctl -json -endpoint=… request key=value``; :class:`LabError` unless
        it answered a JSON object (it exits 0 on some fatal errors)."""
        cmd = [ctl_binary(self.binary), "-json", f"-endpoint={self.admin}", request]
        cmd += [f"{k}={v}" for k, v in args.items()]
        proc = _run(*cmd, check=False, timeout=20)
        try:
            value = json.loads(proc.stdout)
        except ValueError:
            value = None
        if proc.returncode != 0 or not isinstance(value, dict) or not value:
            raise LabError(f"yggdrasilctl {request}: {proc.stdout.strip()} {proc.stderr.strip()}")
        return value

    async def actl(self, request: str, **args: str) -> dict[str, Any]:
        """:meth:`ctl` off the event loop (in-process nodes must keep running)."""
        return await asyncio.to_thread(self.ctl, request, **args)

    def peers_up(self) -> list[dict[str, Any]]:
        peers = self.ctl("getPeers").get("peers") or []
        return [p for p in peers if p.get("up", True)]

    def wait_listening(self, port: int, timeout: float = 10.0) -> None:
        """Until a TCP/TLS listener on 127.0.0.1:``port`` accepts (loopback daemons)."""

        def accepts() -> bool:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return True

        _wait(f"the daemon to listen on {port}", accepts, timeout=timeout, interval=0.05)

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
        if self.host is not None:
            self.host.lab._procs.pop(self.proc.pid, None)
        self.proc = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log().splitlines()[-lines:]) or "(no log)"


def loopback_daemon(
    workdir: Path,
    *,
    listen: list[str] | None = None,
    peers: list[str] | None = None,
    private_key: str | None = None,
    binary: str = YGG_05,
    node_info: dict[str, Any] | None = None,
) -> Daemon:
    """A daemon (not started) in the test process's namespace: ``IfName: none``, so
    neither root nor a TUN is needed; links on loopback. Owner: :meth:`Daemon.stop`."""
    workdir.mkdir(parents=True, exist_ok=True)
    admin_path = workdir / "admin.sock"
    conf = daemon_config(
        binary,
        admin_path,
        if_name="none",
        listen=listen,
        peers=peers,
        private_key=private_key,
        node_info=node_info if node_info is not None else {"name": "meshsuite-test"},
    )
    config_path = workdir / "yggdrasil.conf"
    config_path.write_text(json.dumps(conf))
    config_path.chmod(0o600)
    return Daemon(None, binary, config_path, workdir / "yggdrasil.log", admin_path, conf)


@contextlib.contextmanager
def running_daemon(workdir: Path, **kwargs: Any) -> Iterator[Daemon]:
    """A started :func:`loopback_daemon`, stopped (by pid) on exit."""
    daemon = loopback_daemon(workdir, **kwargs)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


@contextlib.asynccontextmanager
async def daemon_running(workdir: Path, **kwargs: Any) -> AsyncIterator[Daemon]:
    """:func:`running_daemon` for async tests: never blocks the event loop (the
    in-process node under test must keep answering its links meanwhile)."""
    daemon = await asyncio.to_thread(loopback_daemon, workdir, **kwargs)
    try:
        await asyncio.to_thread(daemon.start)
        yield daemon
    finally:
        await asyncio.to_thread(daemon.stop)


@dataclass(frozen=True)
class RootLink:
    """A veth between the test process's namespace and a host (:meth:`Host.link_root`)."""

    root_if: str
    host_if: str
    root_addr: str
    host_addr: str

    def close(self) -> None:
        _run("ip", "link", "del", self.root_if, check=False)


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

    async def arun(
        self, *cmd: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """:meth:`run` off the event loop (in-process nodes keep running meanwhile)."""
        return await asyncio.to_thread(self.run, *cmd, check=check, timeout=timeout)

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
        private_key: str | None = None,
        node_info: dict[str, Any] | None = None,
        multicast: list[dict[str, Any]] | None = None,
        if_name: str = TUN,
    ) -> Daemon:
        """A daemon in this host, by default with the TUN ``lb-tun`` (``if_name="none"``:
        without); blocks until it answers (and its TUN has its address)."""
        admin_path = self.dir / "admin.sock"
        config = daemon_config(
            binary,
            admin_path,
            if_name=if_name,
            listen=listen,
            peers=peers,
            private_key=private_key,
            node_info=node_info,
            multicast=multicast,
        )
        config_path = self.dir / "yggdrasil.conf"
        config_path.write_text(json.dumps(config, indent=2))
        config_path.chmod(0o600)
        daemon = Daemon(self, binary, config_path, self.dir / "daemon.log", admin_path, config)
        self.daemon = daemon  # registered first: the lab stops it even if start fails
        daemon.start()
        return daemon

    def link_root(self, subnet: int) -> RootLink:
        """A veth from the test process's namespace into this host: ``fd6c:62<subnet>::1``
        there, ``::2`` here (``subnet`` keeps concurrent labs apart). Names stay inside
        the lab's prefix; deleting this host's namespace deletes the pair."""
        prefix = self.ns.rsplit("-", 1)[0]  # lb-<lab><tag>
        link = RootLink(
            root_if=f"{prefix}-r"[:15],
            host_if=f"{prefix}-r{self.name}"[:15],
            root_addr=f"fd6c:62{subnet:02x}::1",
            host_addr=f"fd6c:62{subnet:02x}::2",
        )
        _run("ip", "link", "add", link.root_if, "type", "veth", "peer", "name", link.host_if,
             "netns", self.ns)  # fmt: skip
        _run("ip", "-6", "addr", "add", f"{link.root_addr}/64", "dev", link.root_if, "nodad")
        _run("ip", "link", "set", link.root_if, "up")
        self.run("ip", "-6", "addr", "add", f"{link.host_addr}/64", "dev", link.host_if, "nodad")
        self.run("ip", "link", "set", link.host_if, "up")
        return link

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
        self.lab._procs[proc.pid] = proc
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
        # Every process started here, by pid. Kept as Popen objects and reaped through them
        # (never a bare waitpid): a Popen whose child was reaped behind its back polls its
        # pid again when collected, and by then the pid may belong to another test's child,
        # which that poll would reap (asyncio then reports its returncode as 255).
        self._procs: dict[int, subprocess.Popen[Any]] = {}
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
        for pid, proc in list(self._procs.items()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        self._procs.clear()
        for ns in {*self._namespaces(), *(h.ns for h in self.hosts.values())}:
            self._kill_namespace_pids(ns)
            _run("ip", "netns", "del", ns, check=False)
            (OWNERS / ns).unlink(missing_ok=True)
        self.hosts.clear()
        shutil.rmtree(self.dir, ignore_errors=True)
        if errors:
            raise LabError("; ".join(errors))
