"""The mail password: scrypt record in ``mail-password.json`` (mode 0600) in the data dir.

Mail clients log in to submission SMTP and IMAP with the node's mail address and this
password. There is no default and no "any password" mode: without a record both
servers refuse to start and say to run ``mesh mail passwd``.

Record (JSON)::

    {"version": 1, "kdf": "scrypt", "n": 32768, "r": 8, "p": 1,
     "salt": "<hex, 16 random bytes>", "hash": "<hex, 32 bytes>"}

The parameters live in the record, so stronger ones later do not break old records.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from core import MeshError, NeedsSetup, UsageError

__all__ = [
    "PASSWORD_FILE_NAME",
    "LoginBusy",
    "LoginThrottle",
    "PasswordRecord",
    "PasswordVerifier",
    "load_password",
    "set_password",
]

log = logging.getLogger(__name__)

PASSWORD_FILE_NAME = "mail-password.json"
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024
# 2^15 * 8 * 128 B = 32 MiB and ~0.1 s per check: cheap for a login, slow for guessing.
DEFAULT_N, DEFAULT_R, DEFAULT_P = 2**15, 8, 1
_MAX_N = 2**20


@dataclass(frozen=True, slots=True)
class PasswordRecord:
    salt: bytes
    hash: bytes
    n: int = DEFAULT_N
    r: int = DEFAULT_R
    p: int = DEFAULT_P

    @classmethod
    def create(cls, password: str) -> PasswordRecord:
        salt = secrets.token_bytes(16)
        record = cls(salt=salt, hash=b"")
        return cls(salt=salt, hash=record.derive(password.encode("utf-8")))

    def derive(self, password: bytes) -> bytes:
        kdf = Scrypt(salt=self.salt, length=32, n=self.n, r=self.r, p=self.p)
        return kdf.derive(password)

    def check(self, password: bytes) -> bool:
        return hmac.compare_digest(self.derive(password), self.hash)

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": 1,
                "kdf": "scrypt",
                "n": self.n,
                "r": self.r,
                "p": self.p,
                "salt": self.salt.hex(),
                "hash": self.hash.hex(),
            }
        )

    @classmethod
    def from_json(cls, text: str, where: Path) -> PasswordRecord:
        try:
            data = json.loads(text)
            if data.get("version") != 1 or data.get("kdf") != "scrypt":
                raise ValueError("unknown version or kdf")
            record = cls(
                salt=bytes.fromhex(data["salt"]),
                hash=bytes.fromhex(data["hash"]),
                n=int(data["n"]),
                r=int(data["r"]),
                p=int(data["p"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise MeshError(
                f"{where} is not a valid mail password record ({exc}); "
                "set a new password with `mesh mail passwd`"
            ) from None
        if (
            not (2 <= record.n <= _MAX_N and record.n & (record.n - 1) == 0)
            or len(record.hash) != 32
        ):
            raise MeshError(f"{where}: bad scrypt parameters; run `mesh mail passwd` again")
        return record


def check_new_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UsageError(f"the mail password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise UsageError(f"the mail password may have at most {MAX_PASSWORD_LENGTH} characters")
    if "\x00" in password or "\n" in password or "\r" in password:
        raise UsageError("the mail password may not contain NUL or line breaks")


def set_password(data_dir: Path, password: str) -> Path:
    """Hash and store ``password`` (atomically, mode 0600); returns the file's path."""
    check_new_password(password)
    record = PasswordRecord.create(password)
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / PASSWORD_FILE_NAME
    fd, tmp = tempfile.mkstemp(prefix=".mail-password.", dir=data_dir)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(record.to_json() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_password(data_dir: Path) -> PasswordRecord:
    """The stored record; a clear error when none is set or the file is exposed."""
    path = data_dir / PASSWORD_FILE_NAME
    try:
        st = path.stat()
    except FileNotFoundError:
        # a first run, not a failure: the node says (at INFO and in `mesh status`) what to do
        raise NeedsSetup(
            "mail needs a password for mail clients to log in: run `mesh mail passwd`, "
            "then start the node again"
        ) from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise MeshError(
            f"{path} is readable by other users (mode {stat.S_IMODE(st.st_mode):o}); "
            f"run `chmod 600 {path}` or set the password again with `mesh mail passwd`"
        )
    return PasswordRecord.from_json(path.read_text(), path)


def _file_stamp(data_dir: Path | None) -> tuple[int, int, int] | None:
    if data_dir is None:
        return None
    try:
        st = (data_dir / PASSWORD_FILE_NAME).stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class LoginBusy(MeshError):
    """Too many logins are waiting for their turn; the client should try again later."""


class LoginThrottle:
    """Password guessing limited per node, across connections and protocols.

    One instance is shared by submission SMTP and IMAP (through their one
    :class:`PasswordVerifier`). Password checks run one at a time, first come first
    served; after ``n`` failures in a row the next check waits ``base * 2**(n-1)`` seconds
    (0.5, 1, 2, 4 ... capped at ``cap``) after the last failure, however many
    connections ask at once. Nothing is ever locked: the right password is checked in its
    turn and resets the count, and ``forget_after`` seconds without a failure do too.
    At most ``max_waiting`` attempts wait at once (memory stays bounded); beyond that an
    attempt gets :class:`LoginBusy` without being checked.
    """

    def __init__(
        self,
        *,
        base: float = 0.5,
        cap: float = 30.0,
        max_waiting: int = 64,
        forget_after: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base, self.cap = base, cap
        self.max_waiting = max_waiting
        self.forget_after = forget_after
        self._clock = clock
        self._lock = asyncio.Lock()  # FIFO: one password check at a time, node-wide
        self._waiting = 0
        self.failures = 0
        self._last_failure = 0.0
        self.checks = 0  # password checks run (for tests and figures)

    def delay(self) -> float:
        """Seconds between the last failure and the next check."""
        return 0.0 if not self.failures else min(self.cap, self.base * 2 ** (self.failures - 1))

    async def attempt(self, check: Callable[[], Awaitable[bool]]) -> bool:
        """Run ``check`` (a password check) in its turn; its result, counted."""
        if self._waiting >= self.max_waiting:
            raise LoginBusy(
                f"{self._waiting} logins are waiting their turn (failed logins slow them "
                f"down); try again in {self.delay():.0f} s"
            )
        self._waiting += 1
        try:
            async with self._lock:
                now = self._clock()
                if self.failures and now - self._last_failure > self.forget_after:
                    self.failures = 0
                wait = self._last_failure + self.delay() - now
                if wait > 0:
                    await asyncio.sleep(wait)
                self.checks += 1
                try:
                    ok = await check()
                except BaseException:  # cancelled mid-check (client gone): counts as failed
                    self._failed()
                    raise
                if ok:
                    self.failures = 0
                else:
                    self._failed()
                return ok
        finally:
            self._waiting -= 1

    def _failed(self) -> None:
        self.failures += 1
        self._last_failure = self._clock()
        if self.failures in (5, 10) or self.failures % 50 == 0:
            log.warning(
                "mail: %d failed logins in a row; each next one waits %.1f s",
                self.failures,
                self.delay(),
            )


class PasswordVerifier:
    """Checks logins for submission SMTP and IMAP against one record.

    scrypt runs in a worker thread so a login never stalls the event loop. A password
    that passed once is remembered as a salted SHA-256 in memory only, so a client that
    logs in for every message does not pay scrypt each time.
    """

    def __init__(
        self,
        record: PasswordRecord,
        username: str,
        *,
        data_dir: Path | None = None,
        throttle: LoginThrottle | None = None,
    ) -> None:
        self.throttle = throttle or LoginThrottle()  # shared by SMTP and IMAP logins
        self._record: PasswordRecord | None = record
        self.username = username
        self._memo_salt = secrets.token_bytes(16)
        self._memo: bytes | None = None
        self._data_dir = data_dir
        self._stamp = _file_stamp(data_dir)

    @classmethod
    def from_data_dir(cls, data_dir: Path, username: str) -> PasswordVerifier:
        """Loads the record now (raising if none is set) and again whenever the file
        changes, so ``mesh mail passwd`` takes effect without restarting the node."""
        return cls(load_password(data_dir), username, data_dir=data_dir)

    def _current(self) -> PasswordRecord | None:
        if self._data_dir is None:
            return self._record
        stamp = _file_stamp(self._data_dir)
        if stamp != self._stamp:
            self._stamp, self._memo = stamp, None
            try:
                self._record = load_password(self._data_dir)
                log.info("mail password record reloaded")
            except MeshError as exc:
                log.error("mail logins refused until this is fixed: %s", exc)
                self._record = None
        return self._record

    def _memo_digest(self, password: bytes) -> bytes:
        return hashlib.sha256(self._memo_salt + password).digest()

    async def verify_password(self, password: bytes) -> bool:
        if len(password) > MAX_PASSWORD_LENGTH * 4:
            return False
        record = self._current()
        if record is None:
            return False
        digest = self._memo_digest(password)
        if self._memo is not None and hmac.compare_digest(digest, self._memo):
            return True
        ok = await asyncio.to_thread(record.check, password)
        if ok:
            self._memo = digest
        return ok

    def username_matches(self, username: str) -> bool:
        return username.strip().lower() == self.username.lower()

    async def __call__(self, username: str, password: str) -> bool:
        """The IMAP server's ``authenticator(username, password)``."""
        return await self.check(username.encode("utf-8"), password.encode("utf-8"))

    async def check(self, username: bytes, password: bytes) -> bool:
        """One login, in its turn (:class:`LoginThrottle`); raises :class:`LoginBusy`."""
        name = username.decode("utf-8", "replace")
        # always pay the cost: no user oracle
        ok = await self.throttle.attempt(lambda: self._checked(name, password))
        if not ok:
            log.warning("mail login refused for user %r", name[:100])
        return ok

    async def _checked(self, name: str, password: bytes) -> bool:
        ok = await self.verify_password(password)
        return ok and self.username_matches(name)
