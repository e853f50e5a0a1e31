"""A yggdrasil daemon run by the suite: config, start, logs, supervision, stop.

Files under ``DATA_DIR/yggdrasil/``: ``yggdrasil.conf`` (0600, the suite's key),
``admin.sock`` (the daemon's AdminListen) and ``daemon.log`` (its output, also sent
to this module's logger). The daemon is restarted after a crash with exponential
backoff (bounded); a run that stayed up a minute resets the count.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TextIO

from core.backend import EventSink, NodeEvent
from core.errors import MeshError
from core.identity import KEY_FILE_NAME, Identity, load_identity
from core.tasks import cancel_and_wait, within

from .daemonconf import DaemonSettings, build_daemon_config, parse_genconf

__all__ = ["ManagedDaemon", "has_cap_net_admin"]

log = logging.getLogger(__name__)

CAP_NET_ADMIN = 12
UNIX_PATH_MAX = 107  # sun_path is 108 bytes with the terminating NUL
TAIL_LINES = 200
SHOWN_LINES = 12
LOG_MAX = 4 * 1024 * 1024  # bytes of daemon.log kept before it is rotated once
STOP_GRACE = 5.0
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
MAX_FAILED_RESTARTS = 8
STABLE_RUN = 60.0

Ready = Callable[[], Awaitable[bool]]


def has_cap_net_admin(status_text: str) -> bool:
    """Whether ``/proc/self/status`` text shows CAP_NET_ADMIN in the effective set."""
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    return False


def _binary_has_file_caps(path: str) -> bool:
    try:
        return bool(os.getxattr(path, "security.capability"))
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has exited; its new parent reaps it


async def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


class ManagedDaemon:
    """One daemon process owned by a backend. ``start`` → ``stop``; not reusable."""

    def __init__(
        self,
        *,
        binary: str,
        data_dir: Path,
        identity: Identity,
        settings: DaemonSettings,
        events: EventSink,
        netns_path: str | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.binary = binary
        self.dir = data_dir / "yggdrasil"
        self.config_path = self.dir / "yggdrasil.conf"
        self.log_path = self.dir / "daemon.log"
        self.identity = identity
        self.settings = settings
        self._events = events
        self._netns_path = netns_path
        self._start_timeout = start_timeout
        self._proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._stopping = False
        self._on_restart: Callable[[], Awaitable[None]] | None = None
        self.restarts = 0
        self._lock_fd: int | None = None

    @staticmethod
    def admin_socket(data_dir: Path) -> Path:
        return data_dir / "yggdrasil" / "admin.sock"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def tail(self) -> list[str]:
        return list(self._tail)

    # -- preparation -------------------------------------------------------------
    def _resolve_binary(self) -> str:
        found = shutil.which(self.binary)
        if found is None:
            raise MeshError(
                f"the yggdrasil daemon binary {self.binary!r} was not found; install it "
                "(Debian/Ubuntu: apt install yggdrasil; others: "
                "https://yggdrasil-network.github.io/installation.html) or set "
                "yggdrasil_binary in mesh.toml to its path"
            )
        return found

    def _check_privileges(self, binary: str) -> None:
        if self.settings.if_name == "none":
            return
        if not os.path.exists("/dev/net/tun"):
            raise MeshError(
                "a managed daemon needs a TUN device but /dev/net/tun is missing; load the "
                "tun module (modprobe tun) or, in a container, pass --device /dev/net/tun"
            )
        if _binary_has_file_caps(binary):
            return  # the daemon gains it on exec (setcap); it reports if that fails
        try:
            status = Path("/proc/self/status").read_text()
        except OSError:
            status = ""
        if not has_cap_net_admin(status):
            raise MeshError(
                "a managed daemon creates a TUN interface, which needs CAP_NET_ADMIN: run "
                f"`mesh up` as root, or grant the daemon the capability (setcap "
                f"cap_net_admin+ep {binary}), or attach to a daemon the system already runs"
            )

    async def _genconf(self, binary: str) -> dict[str, object]:
        proc = await asyncio.create_subprocess_exec(
            binary,
            "-genconf",
            "-json",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await within(proc.communicate(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise MeshError(f"{binary} -genconf did not finish in 30 s") from None
        if proc.returncode != 0:
            raise MeshError(f"{binary} -genconf failed: {err.decode(errors='replace')[-500:]}")
        return parse_genconf(out, binary)

    def _key_path(self) -> Path | None:
        """The suite's PEM key file, if it holds this identity (0.5 reads it directly)."""
        path = self.settings.key_path
        if path is None:
            return None
        try:
            same = load_identity(path).public_key == self.identity.public_key
        except MeshError:
            return None
        return path if same else None

    async def prepare(self) -> str:
        """Check the binary and privileges, write the config. Returns the binary path."""
        binary = self._resolve_binary()
        self._check_privileges(binary)
        sock = str(self.admin_socket(self.dir.parent))
        if len(sock.encode()) > UNIX_PATH_MAX:
            raise MeshError(
                f"the admin socket path {sock} is longer than {UNIX_PATH_MAX} bytes, the "
                "limit for Unix sockets; use a shorter --data-dir"
            )
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        template = await self._genconf(binary)
        settings = DaemonSettings(
            listen=self.settings.listen,
            peers=self.settings.peers,
            multicast_interfaces=self.settings.multicast_interfaces,
            admin_listen=f"unix://{sock}",
            if_name=self.settings.if_name,
            key_path=self._key_path(),
        )
        config = build_daemon_config(template, self.identity, settings)
        tmp = self.config_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(config, fh, indent=2)
        os.replace(tmp, self.config_path)
        return binary

    # -- ownership -----------------------------------------------------------------
    async def claim(self) -> None:
        """Become the one owner of this data dir's daemon; stop one a crashed owner left.

        The owner holds an exclusive ``flock`` on ``yggdrasil/lock`` until :meth:`stop`
        (the kernel drops it if the process dies). A daemon recorded in ``daemon.pid``
        without a living owner is an orphan and is stopped first.
        """
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MeshError(
                f"the yggdrasil daemon of {self.dir.parent} is already managed by another "
                "`mesh up`; stop that one first (or use another --data-dir)"
            ) from None
        self._lock_fd = fd
        await self._stop_orphan()

    async def _stop_orphan(self) -> None:
        pid_file = self.dir / "daemon.pid"
        try:
            pid = int(pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            pid_file.unlink(missing_ok=True)
            return
        if str(self.config_path).encode() not in cmdline:
            pid_file.unlink(missing_ok=True)  # that pid is some other process now
            return
        log.warning("stopping yggdrasil (pid %d) left running by a node that crashed", pid)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if await _gone(pid, STOP_GRACE):
                break
        pid_file.unlink(missing_ok=True)

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- running -----------------------------------------------------------------
    async def start(self, ready: Ready, on_restart: Callable[[], Awaitable[None]]) -> None:
        """Launch, wait until ``ready()`` is true, then supervise in an owned task."""
        binary = await self.prepare()
        self._on_restart = on_restart
        await self._launch(binary)
        await self._wait_ready(ready)
        self._supervisor = asyncio.get_running_loop().create_task(
            self._supervise(binary, ready), name=f"yggdrasil-supervisor-{self.pid}"
        )

    async def _launch(self, binary: str) -> None:
        cmd = [binary, "-useconffile", str(self.config_path)]
        if self._netns_path is not None:
            cmd = ["nsenter", f"--net={self._netns_path}", "--", *cmd]
        self._tail.clear()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C at the terminal is ours to handle
            )
        except OSError as exc:
            raise MeshError(f"cannot start {binary}: {exc}") from None
        (self.dir / "daemon.pid").write_text(f"{self._proc.pid}\n")
        log.info("started yggdrasil (pid %d): %s", self._proc.pid, " ".join(cmd))
        assert self._proc.stdout is not None
        out = self._open_log()
        self._pump = asyncio.get_running_loop().create_task(
            self._pump_logs(self._proc.stdout, out), name=f"yggdrasil-log-{self._proc.pid}"
        )

    def _open_log(self) -> TextIO:
        """``daemon.log`` for appending; over LOG_MAX it becomes ``daemon.log.1`` first."""
        with contextlib.suppress(FileNotFoundError):
            if self.log_path.stat().st_size > LOG_MAX:
                os.replace(self.log_path, self.log_path.with_name(self.log_path.name + ".1"))
        return open(self.log_path, "a", encoding="utf-8", errors="replace")

    async def _pump_logs(self, stream: asyncio.StreamReader, out: TextIO) -> None:
        with out:
            while True:
                try:
                    raw = await stream.readline()
                except ValueError:  # a line over the stream limit: take what is there
                    raw = await stream.read(65536)
                if not raw:
                    return
                line = raw.decode(errors="replace").rstrip()
                self._tail.append(line)
                out.write(line + "\n")
                out.flush()
                log.info("yggdrasil: %s", line)

    def _useful_tail(self) -> list[str]:
        """The last lines, without a Go panic's goroutine dump (the panic line stays)."""
        lines = list(self._tail)
        for i, line in enumerate(lines):
            if line.startswith("goroutine ") and i and lines[i - 1] == "":
                lines = lines[: i - 1]
                break
        return lines[-SHOWN_LINES:]

    def _failure(self, what: str) -> MeshError:
        tail = self._useful_tail()
        lines = "\n  ".join(tail) or "(no output)"
        text = "\n".join(tail).lower()
        hint = ""
        if "operation not permitted" in text or "permission denied" in text:
            hint = " It lacks a privilege: run as root or give it CAP_NET_ADMIN."
        elif "address already in use" in text:
            hint = " A Listen port or the admin socket is taken by another program."
        elif "failed to create tun" in text:
            hint = " It could not create its TUN interface: check if_name (at most 15 characters)."
        return MeshError(
            f"the yggdrasil daemon {what}.{hint} Its last output ({self.log_path}):\n  {lines}"
        )

    async def _wait_ready(self, ready: Ready) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self._start_timeout
        while True:
            if self._proc.returncode is not None:
                if self._pump is not None:
                    await self._pump
                raise self._failure(f"exited at once with status {self._proc.returncode}")
            if await ready():
                return
            if time.monotonic() > deadline:
                await self._terminate()
                raise self._failure(
                    f"did not bring its TUN address up within {self._start_timeout:g} s"
                )
            await asyncio.sleep(0.1)

    async def _supervise(self, binary: str, ready: Ready) -> None:
        failures = 0
        started = time.monotonic()
        while True:
            assert self._proc is not None
            code = await self._proc.wait()
            if self._pump is not None:
                await self._pump
            if self._stopping:
                return
            if time.monotonic() - started > STABLE_RUN:
                failures = 0
            log.warning("yggdrasil (pid %d) exited with status %d", self._proc.pid, code)
            self._events(NodeEvent("daemon.exited", {"status": code, "log": self.tail()[-5:]}))
            while True:
                delay = min(BACKOFF_FIRST * 2**failures, BACKOFF_MAX)
                failures += 1
                if failures > MAX_FAILED_RESTARTS:
                    log.error("yggdrasil keeps failing; giving up after %d restarts", failures - 1)
                    self._events(NodeEvent("daemon.failed", {"log": self.tail()}))
                    return
                await asyncio.sleep(delay)
                try:
                    await self._launch(binary)
                    await self._wait_ready(ready)
                except MeshError as exc:
                    log.warning("restarting yggdrasil failed: %s", exc)
                    continue
                break
            started = time.monotonic()
            self.restarts += 1
            if self._on_restart is not None:
                await self._on_restart()
            self._events(
                NodeEvent(
                    "daemon.restarted",
                    {"pid": self.pid, "restarts": self.restarts, "previous_status": code},
                )
            )

    async def _terminate(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await within(proc.wait(), STOP_GRACE)
            except TimeoutError:
                log.warning("yggdrasil (pid %d) ignored SIGTERM; killing it", proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._pump is not None:
            await self._pump

    async def stop(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            await cancel_and_wait(self._supervisor, what="the daemon supervisor")
            self._supervisor = None
        await self._terminate()
        if self._proc is not None:
            (self.dir / "daemon.pid").unlink(missing_ok=True)
            log.info("stopped yggdrasil")
        self._release()


def default_key_path(data_dir: Path) -> Path:
    return data_dir / KEY_FILE_NAME
