"""Real yggdrasil daemons for tests: loopback only, ``IfName: none``, temp dirs.

Each :class:`Daemon` runs ``yggdrasil -useconffile`` from its own directory with an
admin socket there; :func:`running_daemon` stops it by pid in a ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

YGGDRASIL = shutil.which("yggdrasil") or "/usr/sbin/yggdrasil"
YGGDRASILCTL = shutil.which("yggdrasilctl") or "/usr/sbin/yggdrasilctl"
YGGDRASIL_04 = "/opt/meshsuite/yggdrasil-0.4.7/usr/sbin/yggdrasil"


def have_daemon() -> bool:
    return os.access(YGGDRASIL, os.X_OK) and os.access(YGGDRASILCTL, os.X_OK)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    def __init__(
        self,
        workdir: Path,
        *,
        private_key: str | None = None,
        listen: list[str] | None = None,
        peers: list[str] | None = None,
        binary: str = YGGDRASIL,
    ) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.binary = binary
        self.admin = self.dir / "admin.sock"
        conf: dict[str, Any] = json.loads(
            subprocess.run([binary, "-genconf", "-json"], check=True, capture_output=True).stdout
        )
        if private_key is not None:
            conf["PrivateKey"] = private_key
        conf.update(
            IfName="none",
            Listen=listen or [],
            Peers=peers or [],
            MulticastInterfaces=[],
            AdminListen=f"unix://{self.admin}",
            NodeInfo={"name": "meshsuite-test"},
        )
        conf.pop("LinkLocalTCPPort", None)
        self.conf = conf
        self.conf_path = self.dir / "yggdrasil.conf"
        self.conf_path.write_text(json.dumps(conf))
        self.log_path = self.dir / "yggdrasil.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def public_key(self) -> bytes:
        return bytes.fromhex(self.conf["PrivateKey"])[32:]

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-useconffile", str(self.conf_path), "-logto", str(self.log_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
            )

    def wait_listening(self, port: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return
            time.sleep(0.05)
        raise TimeoutError(f"daemon did not listen on {port}: {self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def ctl(self, command: str, **args: str) -> dict[str, Any]:
        """``yggdrasilctl -json -endpoint unix://... command key=value``."""
        argv = [YGGDRASILCTL, "-json", "-endpoint", f"unix://{self.admin}", command]
        argv += [f"{k}={v}" for k, v in args.items()]
        out = subprocess.run(argv, capture_output=True, timeout=20)
        # yggdrasilctl exits 0 even on "Fatal error": judge by the output
        try:
            result: dict[str, Any] = json.loads(out.stdout)
        except ValueError:
            result = {}
        if out.returncode != 0 or not isinstance(result, dict) or not result:
            raise RuntimeError(f"{command} failed: {out.stderr.decode()} {out.stdout.decode()}")
        return result

    def wait_admin(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError):
                self.ctl("getSelf")
                return
            time.sleep(0.1)
        raise TimeoutError(f"admin socket {self.admin} never answered: {self.log()}")


@contextlib.contextmanager
def running_daemon(workdir: Path, **kwargs: Any) -> Iterator[Daemon]:
    daemon = Daemon(workdir, **kwargs)
    try:
        daemon.start()
        daemon.wait_admin()
        yield daemon
    finally:
        daemon.stop()


@contextlib.asynccontextmanager
async def daemon_running(workdir: Path, **kwargs: Any) -> AsyncIterator[Daemon]:
    """:func:`running_daemon` for async tests: never blocks the event loop (the
    embedded node under test must keep answering its links meanwhile)."""
    daemon = await asyncio.to_thread(Daemon, workdir, **kwargs)
    try:
        await asyncio.to_thread(daemon.start)
        await asyncio.to_thread(daemon.wait_admin)
        yield daemon
    finally:
        await asyncio.to_thread(daemon.stop)


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll a synchronous predicate until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last value {last!r}")
