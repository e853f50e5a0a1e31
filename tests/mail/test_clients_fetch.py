"""fetchmail and offlineimap3 (Debian packages) against a real node's IMAP, set up as
docs/mail-clients.md says. Under CI=true a missing client fails; elsewhere it skips."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import require
from tests.mail.helpers import PASSWORD, MailNode, on_shared_mesh

pytestmark = pytest.mark.timeout(120)

CYRILLIC = "Входящие/Архив"
MESSAGE = b"From: x@y.mesh\r\nSubject: fetch me\r\nMessage-ID: <f1@y>\r\n\r\nfetched body\r\n"


async def _run(argv: list[str], home: Path, timeout: float = 60) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "HOME": str(home)},
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def _fetchmailrc(node: MailNode, out: Path, *, plain: bool) -> str:
    tls = ' sslproto ""' if plain else ""
    return (
        "set no syslog\n"
        f"poll 127.0.0.1 service {node.service.imap_port} protocol IMAP auth password\n"
        f'  user "{node.address}" password "{PASSWORD}" is "{os.environ.get("USER", "me")}" here\n'
        f"  {tls} keep fetchall\n"
        f"  mda \"/bin/sh -c 'cat > {out}/msg.$$'\"\n"
    )


@on_shared_mesh
async def test_fetchmail_fetches_with_sslproto_empty_and_says_why_without(
    mail_pair: tuple[MailNode, MailNode], tmp_path: Path
) -> None:
    require(shutil.which("fetchmail") is not None, "fetchmail (Debian package) is not installed")
    a, _ = mail_pair
    await a.store.deliver("INBOX", MESSAGE)
    out = tmp_path / "out"
    out.mkdir()
    rc = tmp_path / "fetchmailrc"
    # fetchmail >= 6.4 tries STARTTLS on every connection and gives up when it fails...
    rc.write_text(_fetchmailrc(a, out, plain=False))
    rc.chmod(0o600)
    code, log = await _run(["fetchmail", "-f", str(rc), "--nodetach", "-v"], tmp_path)
    assert code == 2 and "upgrade to TLS failed" in log, log
    assert list(out.iterdir()) == []
    # ... `sslproto ""` says plain text is meant (the server listens on loopback only).
    rc.write_text(_fetchmailrc(a, out, plain=True))
    code, log = await _run(["fetchmail", "-f", str(rc), "--nodetach", "-v"], tmp_path)
    assert code == 0, log
    (fetched,) = list(out.iterdir())
    assert fetched.read_bytes().replace(b"\r\n", b"\n").endswith(b"fetched body\n")
    (uid,) = await a.store.list_uids("INBOX")
    assert await a.store.get_flags("INBOX", uid) == {"\\Seen"}  # kept, marked read


def _offlineimaprc(node: MailNode, base: Path) -> str:
    return (
        f"[general]\naccounts = mesh\nmetadata = {base}/meta\n\n"
        "[Account mesh]\nlocalrepository = local\nremoterepository = remote\n"
        "utf8foldernames = yes\n\n"
        f"[Repository local]\ntype = Maildir\nlocalfolders = {base}/mail\nsep = /\n\n"
        f"[Repository remote]\ntype = IMAP\nremotehost = 127.0.0.1\n"
        f"remoteport = {node.service.imap_port}\nssl = no\nstarttls = no\n"
        f"remoteuser = {node.address}\nremotepass = {PASSWORD}\n"
    )


def _messages(folder: Path) -> list[Path]:
    return [p for sub in ("cur", "new") for p in (folder / sub).iterdir()]


@on_shared_mesh
async def test_offlineimap_syncs_folders_with_non_ascii_names_both_ways(
    mail_pair: tuple[MailNode, MailNode], tmp_path: Path
) -> None:
    require(
        shutil.which("offlineimap") is not None,
        "offlineimap (Debian package offlineimap3) is not installed",
    )
    a, _ = mail_pair
    await a.store.deliver("INBOX", MESSAGE)
    await a.store.create_mailbox(CYRILLIC)
    await a.store.deliver(CYRILLIC, MESSAGE.replace(b"fetch me", b"archived"))
    rc = tmp_path / "offlineimaprc"
    rc.write_text(_offlineimaprc(a, tmp_path))
    argv = ["offlineimap", "-c", str(rc), "-o", "-u", "basic"]
    code, log = await _run(argv, tmp_path)
    assert code == 0 and "ERROR" not in log, log
    mail = tmp_path / "mail"
    (inbox,) = _messages(mail / "INBOX")
    assert b"fetched body" in inbox.read_bytes()
    (archived,) = _messages(mail / "Входящие" / "Архив")
    assert b"Subject: archived" in archived.read_bytes()
    # A message written into the local folder is uploaded to the node (APPEND).
    new = mail / "Входящие" / "Архив" / "new" / "1700000000.1.local"
    new.write_bytes(b"From: me@mesh\nSubject: uploaded\n\nfrom offlineimap\n")
    code, log = await _run(argv, tmp_path)
    assert code == 0, log
    raws = [await a.store.fetch_raw(CYRILLIC, uid) for uid in await a.store.list_uids(CYRILLIC)]
    assert any(raw is not None and b"Subject: uploaded" in raw for raw in raws), raws
