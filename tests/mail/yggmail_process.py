"""The real Yggmail (``../shared/tools/yggmail/yggmail``) as a test peer.

:func:`yggmail_binary` finds it (``$MESHSUITE_YGGMAIL``, else beside the repository as
the team's tools README says, else ``yggmail`` on the PATH) and calls
:func:`tests.conftest.require`: missing under CI is
a failure. :class:`Yggmail` runs one node on a fresh database, peered to the URIs given
(Yggmail only dials), with its local SMTP/IMAP on free loopback ports and a password
set with ``-passwordhash`` (a bcrypt hash from libcrypt); its log is kept (bounded) so
tests can wait for lines. Every wait is bounded; ``stop`` terminates, then kills.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import smtplib
import warnings
from collections import deque
from email.message import EmailMessage
from pathlib import Path

from tests.conftest import require
from tests.lab.lab import free_port
from tests.mail.helpers import imap_fetch_all

__all__ = ["PASSWORD", "Yggmail", "yggmail_binary"]

PASSWORD = "yggmail test password"
_ADDRESS = re.compile(r"Mail address: ([0-9a-f]{64})@yggmail")
_REPO = Path(__file__).resolve().parents[2]


def yggmail_binary() -> str:
    beside = _REPO.parent / "shared/tools/yggmail/yggmail"
    on_path = shutil.which("yggmail")
    chosen = os.environ.get("MESHSUITE_YGGMAIL") or (
        beside if beside.is_file() or on_path is None else on_path
    )
    path = Path(chosen)
    require(
        path.is_file() and os.access(path, os.X_OK),
        f"the real Yggmail binary at {path} (set MESHSUITE_YGGMAIL to another path)",
    )
    return str(path)


def _bcrypt(password: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # libcrypt's bcrypt; the module leaves Python in 3.13

    hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
    require(bool(hashed and hashed.startswith("$2")), "libcrypt with bcrypt for Yggmail's password")
    assert hashed is not None
    return hashed


class Yggmail:
    def __init__(self, directory: Path, peers: list[str]) -> None:
        self.directory = directory
        self.peers = peers
        self.smtp_port = free_port()
        self.imap_port = free_port()
        self.key = ""
        self.log: deque[str] = deque(maxlen=2000)
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._line = asyncio.Event()

    @property
    def address(self) -> str:
        return f"{self.key}@yggmail"

    async def start(self, timeout: float = 20.0) -> Yggmail:
        """Start (again, on the same database and ports) and wait for its mail address."""
        binary = yggmail_binary()
        self.log.clear()  # waits below look at this run's lines only
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            "-database", str(self.directory / "yggmail.db"),
            "-smtp", f"127.0.0.1:{self.smtp_port}",
            "-imap", f"127.0.0.1:{self.imap_port}",
            "-multicast=false",
            "-passwordhash", _bcrypt(PASSWORD),
        ]  # fmt: skip
        for peer in self.peers:
            args += ["-peer", peer]
        self._proc = await asyncio.create_subprocess_exec(
            binary,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.create_task(self._read(self._proc))
        line = await self.wait_log(_ADDRESS, timeout)
        match = _ADDRESS.search(line)
        assert match is not None
        self.key = match.group(1)
        await self.wait_log(re.compile("Listening for SMTP"), timeout)
        return self

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while raw := await proc.stdout.readline():
            self.log.append(raw.decode("utf-8", "replace").rstrip())
            self._line.set()

    async def wait_log(self, pattern: re.Pattern[str], timeout: float, since: int = 0) -> str:
        """The first log line from index ``since`` on that matches ``pattern``."""
        async with asyncio.timeout(timeout):
            while True:
                for line in list(self.log)[since:]:
                    if pattern.search(line):
                        return line
                self._line.clear()
                await self._line.wait()

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None

    # -- its local mail ports -----------------------------------------------------------
    def submit(self, msg: EmailMessage, to: list[str]) -> None:
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=30) as smtp:
            smtp.login(self.address, PASSWORD)
            refused = smtp.send_message(msg, from_addr=self.address, to_addrs=to)
            assert refused == {}, refused

    def fetch_all(self, mailbox: str = "INBOX") -> list[bytes]:
        return imap_fetch_all(self.imap_port, self.address, PASSWORD, mailbox)
