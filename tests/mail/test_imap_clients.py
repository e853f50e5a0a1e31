"""External mail clients from Debian packages against the real server: mbsync and mutt."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import termios
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from apps.mail.imap import ImapServer
from apps.mail.store import MailStore
from tests.conftest import require

USER = "ef" * 32 + "@mesh"
PASSWORD = "client test pw"

MSG_A = (
    b"From: a@x.mesh\r\nSubject: alpha\r\nDate: Mon, 04 Mar 2024 09:00:00 +0000\r\n\r\nbody A\r\n"
)
MSG_B = (
    b"From: b@x.mesh\r\nSubject: bravo\r\nDate: Tue, 05 Mar 2024 09:00:00 +0000\r\n\r\nbody B\r\n"
)
MSG_C = (
    b"From: c@x.mesh\r\nSubject: charlie\r\nDate: Wed, 06 Mar 2024 09:00:00 +0000\r\n\r\nbody C\r\n"
)
MSG_D = (
    b"From: d@x.mesh\r\nSubject: delta\r\nDate: Thu, 07 Mar 2024 09:00:00 +0000\r\n\r\nbody D\r\n"
)


@dataclass
class Served:
    store: MailStore
    port: int
    tmp: Path


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    store = await MailStore.open(tmp_path / "mail.db")

    async def authenticator(user: str, password: str) -> bool:
        return password == PASSWORD

    server = ImapServer(store, authenticator, username=USER)
    await server.start("127.0.0.1", 0)
    try:
        yield Served(store, server.port, tmp_path)
    finally:
        await server.close()
        await store.close()


def _maildir_files(box: Path) -> dict[str, Path]:
    """Message files of a Maildir folder by mbsync's *local* UID (``,U=<n>``)."""
    out: dict[str, Path] = {}
    for sub in ("cur", "new"):
        for path in (box / sub).iterdir():
            uid = path.name.split(",U=")[1].split(":")[0] if ",U=" in path.name else path.name
            out[uid] = path
    return out


def _same(maildir_bytes: bytes, wire: bytes) -> bool:
    """Equal but for line ends and the X-TUID header mbsync uses to track its uploads."""
    lines = maildir_bytes.replace(b"\r\n", b"\n").split(b"\n")
    kept = b"\r\n".join(line for line in lines if not line.startswith(b"X-TUID: "))
    return kept == wire


async def _mbsync(rc: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        "mbsync", "-c", str(rc), "-a",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, out.decode(errors="replace")


async def test_mbsync_syncs_both_ways(served: Served) -> None:
    require(shutil.which("mbsync") is not None, "mbsync (Debian package isync) is not installed")
    store = served.store
    await store.deliver("INBOX", MSG_A, flags=["\\Seen"])
    await store.deliver("INBOX", MSG_B, flags=["\\Flagged"])
    maildir = served.tmp / "maildir"
    maildir.mkdir()
    rc = served.tmp / "mbsyncrc"
    rc.write_text(
        f"IMAPAccount mesh\nHost 127.0.0.1\nPort {served.port}\nUser {USER}\n"
        f'Pass "{PASSWORD}"\nSSLType None\nAuthMechs LOGIN\n\n'
        "IMAPStore remote\nAccount mesh\n\n"
        f"MaildirStore local\nPath {maildir}/\nInbox {maildir}/INBOX\nSubFolders Verbatim\n\n"
        "Channel sync\nFar :remote:\nNear :local:\nPatterns *\nCreate Both\n"
        "Expunge Both\nSyncState *\n"
    )

    await _mbsync(rc)  # first sync: server -> Maildir
    assert {p.name for p in maildir.iterdir()} >= {"INBOX", "Sent", "Drafts", "Trash", "Junk"}
    local = _maildir_files(maildir / "INBOX")
    assert set(local) == {"1", "2"}
    assert _same(local["1"].read_bytes(), MSG_A)
    assert local["1"].name.endswith(":2,S") and local["2"].name.endswith(":2,F")

    # Local changes: a new message, B marked read, A trashed. Server: D arrives.
    (maildir / "INBOX" / "new" / "1700000000.local.host").write_bytes(MSG_C)
    local["2"].rename(maildir / "INBOX" / "cur" / (local["2"].name.split(":")[0] + ":2,FS"))
    local["1"].rename(local["1"].with_name(local["1"].name.split(":")[0] + ":2,ST"))
    await store.deliver("INBOX", MSG_D)
    projects = maildir / "Projects"  # a folder that exists only locally: mbsync CREATEs it
    for sub in ("cur", "new", "tmp"):
        (projects / sub).mkdir(parents=True)
    (projects / "new" / "1700000001.local.host").write_bytes(MSG_A)

    await _mbsync(rc)
    (project_uid,) = await store.list_uids("Projects")
    assert _same(await store.fetch_raw("Projects", project_uid) or b"", MSG_A)
    uids = await store.list_uids("INBOX")
    assert uids[:2] == [2, 3]  # A expunged, UIDs never reused
    assert await store.get_flags("INBOX", 2) == {"\\Flagged", "\\Seen"}
    contents = {uid: await store.fetch_raw("INBOX", uid) for uid in uids}
    assert MSG_D in contents.values()
    assert any(_same(raw or b"", MSG_C) for raw in contents.values())  # uploaded by mbsync
    assert len(uids) == 3
    local = _maildir_files(maildir / "INBOX")
    assert "1" not in local
    assert any(_same(p.read_bytes(), MSG_D) for p in local.values())

    # Server-side flag change flows back to the Maildir.
    d_uid = next(uid for uid, raw in contents.items() if raw == MSG_D)
    await store.store_flags("INBOX", [d_uid], "+", ["\\Flagged", "\\Seen"])
    await _mbsync(rc)
    local = _maildir_files(maildir / "INBOX")
    (d_file,) = [p for p in local.values() if _same(p.read_bytes(), MSG_D)]
    assert d_file.name.endswith(":2,FS")


def _run_in_pty(argv: list[str], timeout: float) -> tuple[int, bytes]:
    """Run a curses program on a pseudo-terminal until it exits; (returncode, screen bytes)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave,
        env={**os.environ, "TERM": "xterm"}, start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    screen = b""
    try:
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    screen += os.read(master, 65536)
                except OSError:
                    break
        proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        with contextlib.suppress(OSError):
            os.close(master)
    return proc.returncode, screen


async def test_mutt_reads_pipes_and_moves_a_message(served: Served) -> None:
    require(shutil.which("mutt") is not None, "mutt (Debian package mutt) is not installed")
    store = served.store
    await store.deliver("INBOX", MSG_A, flags=["\\Seen"])
    await store.deliver("INBOX", MSG_B)  # unread: mutt opens with the cursor on it
    out = served.tmp / "piped.txt"
    rc = served.tmp / "muttrc"
    rc.write_text(
        f'set imap_user="{USER}"\nset imap_pass="{PASSWORD}"\n'
        f'set folder="imap://127.0.0.1:{served.port}/"\nset spoolfile="+INBOX"\n'
        'set ssl_starttls=no\nset ssl_force_tls=no\nset header_cache=""\n'
        'set message_cachedir=""\nset wait_key=no\nset confirmcreate=no\n'
        "set confirmappend=no\nset delete=yes\nset quit=yes\nset move=no\n"
        "set mail_check=0\nset timeout=1\nset sort=date-sent\n"
    )
    keys = f"<pipe-message>cat > {out}<enter><save-message>=Archive<enter><sync-mailbox><quit>"
    argv = ["mutt", "-n", "-F", str(rc), "-e", f'push "{keys}"']
    code, screen = await asyncio.to_thread(_run_in_pty, argv, 60)
    assert code == 0, screen[-2000:]
    assert b"Authenticating" in screen
    assert out.read_bytes().replace(b"\n", b"\r\n").endswith(b"body B\r\n")
    assert b"Subject: bravo" in out.read_bytes()
    assert await store.list_uids("INBOX") == [1]  # B copied out, flagged \Deleted, expunged
    archived = await store.list_uids("Archive")
    assert len(archived) == 1
    assert await store.fetch_raw("Archive", archived[0]) == MSG_B


async def test_mutt_header_cache_with_condstore_sees_server_flag_changes(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    require(shutil.which("mutt") is not None, "mutt (Debian package mutt) is not installed")
    store = served.store
    for raw in (MSG_A, MSG_B, MSG_C):
        await store.deliver("INBOX", raw)
    cache = served.tmp / "hcache"
    cache.mkdir()
    rc = served.tmp / "muttrc"
    rc.write_text(
        f'set imap_user="{USER}"\nset imap_pass="{PASSWORD}"\n'
        f'set folder="imap://127.0.0.1:{served.port}/"\nset spoolfile="+INBOX"\n'
        f'set ssl_starttls=no\nset ssl_force_tls=no\nset header_cache="{cache}"\n'
        "set imap_condstore=yes\nset wait_key=no\nset confirmcreate=no\n"
        "set confirmappend=no\nset quit=yes\nset move=no\nset mail_check=0\nset timeout=1\n"
    )
    code, screen = await asyncio.to_thread(
        _run_in_pty, ["mutt", "-n", "-F", str(rc), "-e", 'push "<quit>"'], 60
    )
    assert code == 0, screen[-2000:]
    await store.store_flags("INBOX", [2], "+", ["\\Flagged"])  # changed while mutt is away
    caplog.set_level("DEBUG", logger="apps.mail.imap.selected")
    keys = "<tag-pattern>~F<enter><tag-prefix><copy-message>=Flagged<enter><quit>"
    code, screen = await asyncio.to_thread(
        _run_in_pty, ["mutt", "-n", "-F", str(rc), "-e", f'push "{keys}"'], 60
    )
    assert code == 0, screen[-2000:]
    assert any("CHANGEDSINCE" in r.getMessage() for r in caplog.records)  # used the cache
    (copied,) = await store.list_uids("Flagged")
    assert await store.fetch_raw("Flagged", copied) == MSG_B


async def _curl(*args: str) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        "curl", "--silent", "--show-error", "--max-time", "30", "--user", f"{USER}:{PASSWORD}",
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode(errors="replace")
    return out


async def test_curl_imap_fetch_search_list_append(served: Served) -> None:
    require(shutil.which("curl") is not None, "curl (Debian package curl) is not installed")
    store = served.store
    await store.deliver("INBOX", MSG_A)
    await store.deliver("INBOX", MSG_B)
    base = f"imap://127.0.0.1:{served.port}"
    assert await _curl(f"{base}/INBOX;UID=2") == MSG_B
    assert await _curl(f"{base}/INBOX;UID=1;SECTION=TEXT") == b"body A\r\n"
    assert await _curl(f"{base}/INBOX", "-X", "UID SEARCH SUBJECT bravo") == b"* SEARCH 2\r\n"
    listing = await _curl(f"{base}/")
    assert b'* LIST (\\HasNoChildren \\Sent) "/" Sent\r\n' in listing
    upload = served.tmp / "upload.eml"
    upload.write_bytes(MSG_C)
    await _curl("--upload-file", str(upload), f"{base}/Drafts")  # APPEND
    (uid,) = await store.list_uids("Drafts")
    assert await store.fetch_raw("Drafts", uid) == MSG_C


async def test_mutt_qresync_resynchronises_expunges_and_flags(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    require(shutil.which("mutt") is not None, "mutt (Debian package mutt) is not installed")
    store = served.store
    for raw in (MSG_A, MSG_B, MSG_C):
        await store.deliver("INBOX", raw)
    cache = served.tmp / "hcache"
    cache.mkdir()
    rc = served.tmp / "muttrc"
    rc.write_text(
        f'set imap_user="{USER}"\nset imap_pass="{PASSWORD}"\n'
        f'set folder="imap://127.0.0.1:{served.port}/"\nset spoolfile="+INBOX"\n'
        f'set ssl_starttls=no\nset ssl_force_tls=no\nset header_cache="{cache}"\n'
        "set imap_condstore=yes\nset imap_qresync=yes\nset wait_key=no\n"
        "set confirmcreate=no\nset confirmappend=no\nset quit=yes\nset move=no\n"
        "set mail_check=0\nset timeout=1\n"
    )
    code, screen = await asyncio.to_thread(
        _run_in_pty, ["mutt", "-n", "-F", str(rc), "-e", 'push "<sync-mailbox><quit>"'], 60
    )
    assert code == 0, screen[-2000:]
    # While mutt is away: B is expunged, C flagged.
    await store.store_flags("INBOX", [2], "+", ["\\Deleted"])
    await store.expunge("INBOX")
    await store.store_flags("INBOX", [3], "+", ["\\Flagged"])
    caplog.set_level("DEBUG", logger="apps.mail.imap")
    keys = (
        "<tag-pattern>~A<enter><tag-prefix><copy-message>=All<enter>"
        "<untag-pattern>~A<enter><tag-pattern>~F<enter><tag-prefix><copy-message>=Flagged<enter>"
        "<quit>"
    )
    code, screen = await asyncio.to_thread(
        _run_in_pty, ["mutt", "-n", "-F", str(rc), "-e", f'push "{keys}"'], 60
    )
    assert code == 0, screen[-2000:]
    # mutt resynchronises with UID FETCH ... (CHANGEDSINCE n VANISHED) (mutt imap/message.c)
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert re.search(r"FETCH INBOX CHANGEDSINCE \d+ VANISHED", log), log
    assert b"[Msgs:2 " in screen and b"Flag:1" in screen, screen[-1500:]  # B gone, C flagged
    copied = {await store.fetch_raw("All", uid) for uid in await store.list_uids("All")}
    assert copied == {MSG_A, MSG_C}
    (flagged,) = await store.list_uids("Flagged")
    assert await store.fetch_raw("Flagged", flagged) == MSG_C
