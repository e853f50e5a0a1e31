"""aerc and neomutt (Debian packages) against a real node, each on its own pseudo-terminal
(a controlling one: aerc opens /dev/tty), set up as docs/mail-clients.md says.
Under CI=true a missing client fails; elsewhere it skips."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import select
import shutil
import signal
import struct
import subprocess
import termios
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from apps.mail.message import from_addresses, header_fields
from tests.conftest import require
from tests.mail.helpers import PASSWORD, MailNode, on_shared_mesh
from tests.mail.test_clients_send import only_message

pytestmark = pytest.mark.timeout(120)

MESSAGE = (
    b"From: x@y.mesh\r\nSubject: read me in a terminal\r\nMessage-ID: <t1@y>\r\n\r\nbody T\r\n"
)
FOLDERS = ("Входящие/Архив", "البريد", "Ideas 💡")


@dataclass
class Screen:
    code: int | None
    data: bytes
    sent: bool


def _controlling_tty() -> None:
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _pump(
    master: int, proc: subprocess.Popen[bytes], data: bytearray, stop: bytes | None, until: float
) -> bool:
    """Collect the screen until ``stop`` shows (True), the program ends or time is up."""
    poller = select.poll()
    poller.register(master, select.POLLIN)
    while proc.poll() is None and time.monotonic() < until:
        if stop is not None and stop in data:
            return True
        if not poller.poll(200):
            continue
        try:
            data += os.read(master, 65536)
        except OSError:  # the program closed its terminal
            return False
    return stop is not None and stop in data


def drive(argv: list[str], env: dict[str, str], when: bytes, keys: bytes, timeout: float) -> Screen:
    """Run a terminal program on a pty; once ``when`` is on screen, type ``keys``; wait
    for it to exit (killed at ``timeout``)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))
    proc = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, preexec_fn=_controlling_tty,
        env={**os.environ, "TERM": "xterm-256color", **env},
    )  # fmt: skip
    os.close(slave)
    data = bytearray()
    until = time.monotonic() + timeout
    sent = False
    try:
        if when and _pump(master, proc, data, when, until):
            time.sleep(0.5)  # let it finish drawing before typing
            os.write(master, keys)
            sent = True
        _pump(master, proc, data, None, until)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.1, until - time.monotonic()))
    finally:
        _end(proc, master)
    return Screen(proc.returncode, bytes(data), sent)


def _end(proc: subprocess.Popen[bytes], master: int) -> None:
    """Kill what is left of the program's session; free its terminal."""
    with contextlib.suppress(ProcessLookupError):
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    with contextlib.suppress(OSError):
        os.close(master)


def _aerc_accounts(node: MailNode) -> str:
    user, password = quote(node.address, safe=""), quote(PASSWORD, safe="")
    return (
        "[mesh]\n"
        f"source = imap+insecure://{user}:{password}@127.0.0.1:{node.service.imap_port}\n"
        f"outgoing = smtp+insecure://{user}:{password}@127.0.0.1:{node.service.submission_port}\n"
        f"default = INBOX\nfrom = <{node.address}>\ncopy-to =\n"
    )


@on_shared_mesh
async def test_aerc_lists_non_ascii_folders_and_shows_the_message(
    mail_pair: tuple[MailNode, MailNode], tmp_path: Path
) -> None:
    require(shutil.which("aerc") is not None, "aerc (Debian package aerc) is not installed")
    a, _ = mail_pair
    await a.store.deliver("INBOX", MESSAGE)
    for folder in FOLDERS:
        await a.store.create_mailbox(folder)
    config = tmp_path / "config" / "aerc"
    config.mkdir(parents=True)
    accounts = config / "accounts.conf"
    accounts.write_text(_aerc_accounts(a))
    accounts.chmod(0o600)  # aerc refuses a readable accounts.conf
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "HOME": str(tmp_path)}
    screen = await asyncio.to_thread(drive, ["aerc"], env, b"read me in a terminal", b":quit\r", 60)
    assert screen.sent and screen.code == 0, screen.data[-3000:]
    for name in ("Входящие", "البريد", "Ideas"):
        assert name.encode() in screen.data, name  # decoded from modified UTF-7


def _muttrc(node: MailNode, base: Path) -> str:
    user = quote(node.address, safe="")
    return (
        f'set imap_user="{node.address}"\nset imap_pass="{PASSWORD}"\n'
        f'set folder="imap://127.0.0.1:{node.service.imap_port}/"\nset spoolfile="+INBOX"\n'
        f'set smtp_url="smtp://{user}@127.0.0.1:{node.service.submission_port}/"\n'
        f'set smtp_pass="{PASSWORD}"\nset from="{node.address}"\nset use_from=yes\n'
        'set record=""\nset ssl_starttls=no\nset ssl_force_tls=no\n'
        'set header_cache=""\nset message_cachedir=""\nset wait_key=no\n'
        "set confirmcreate=no\nset confirmappend=no\nset delete=yes\nset quit=yes\n"
        f"set move=no\nset mail_check=0\nset timeout=1\nset tmpdir={base}\n"
    )


@on_shared_mesh
async def test_neomutt_reads_pipes_and_moves_a_message(
    mail_pair: tuple[MailNode, MailNode], tmp_path: Path
) -> None:
    require(shutil.which("neomutt") is not None, "neomutt (Debian package) is not installed")
    a, _ = mail_pair
    await a.store.deliver("INBOX", MESSAGE)
    rc = tmp_path / "neomuttrc"
    rc.write_text(_muttrc(a, tmp_path))
    out = tmp_path / "piped.txt"
    keys = f"<pipe-message>cat > {out}<enter><save-message>=Archive<enter><sync-mailbox><quit>"
    argv = ["neomutt", "-n", "-F", str(rc), "-e", f'push "{keys}"']
    screen = await asyncio.to_thread(drive, argv, {"HOME": str(tmp_path)}, b"", b"", 60)
    assert screen.code == 0, screen.data[-3000:]
    assert out.read_bytes().replace(b"\n", b"\r\n").endswith(b"body T\r\n")
    assert await a.store.list_uids("INBOX") == []  # saved to Archive, expunged
    (archived,) = await a.store.list_uids("Archive")
    assert await a.store.fetch_raw("Archive", archived) == MESSAGE


@on_shared_mesh
async def test_neomutt_sends_in_batch_mode_through_submission(
    mail_pair: tuple[MailNode, MailNode], tmp_path: Path
) -> None:
    require(shutil.which("neomutt") is not None, "neomutt (Debian package) is not installed")
    a, b = mail_pair
    rc = tmp_path / "neomuttrc"
    rc.write_text(_muttrc(a, tmp_path))
    proc = await asyncio.create_subprocess_exec(
        "neomutt", "-n", "-F", str(rc), "-s", "from neomutt", "--", b.address,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={**os.environ, "HOME": str(tmp_path)},
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(b"hello from neomutt\n"), 60)
    assert proc.returncode == 0, out.decode(errors="replace")

    raw = await only_message(b)
    assert b"Subject: from neomutt" in raw and b"hello from neomutt" in raw
    assert from_addresses(header_fields(raw)) == [a.address]
