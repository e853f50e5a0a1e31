"""Mail clients no one here wrote: mutt sends through A's submission port, mbsync pulls
B's mailboxes over IMAP, with the settings docs/mail.md gives."""

from __future__ import annotations

import asyncio
import email
import os
import shutil
from email.policy import default
from pathlib import Path

from tests.conftest import require
from tests.mail.helpers import PASSWORD, MailNode, on_shared_mesh, wait_for


async def _run(*cmd: str, home: Path, stdin: bytes = b"") -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(stdin), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")


def _muttrc(path: Path, node: MailNode, secret: Path) -> None:
    user = node.address
    path.write_text(
        f'set my_user     = "{user}"\n'
        "set from        = $my_user\n"
        "set imap_user   = $my_user\n"
        f'set imap_pass   = "`cat {secret}`"\n'
        f'set folder      = "imap://127.0.0.1:{node.service.imap_port}/"\n'
        'set spoolfile   = "+INBOX"\n'
        'set record      = ""\n'
        f'set smtp_url    = "smtp://{user.replace("@", "%40")}@127.0.0.1:'
        f'{node.service.submission_port}/"\n'
        "set smtp_pass   = $imap_pass\n"
        "set ssl_starttls = no\n"
        "set ssl_force_tls = no\n"
    )


def _mbsyncrc(path: Path, node: MailNode, secret: Path, maildir: Path) -> None:
    path.write_text(
        f"IMAPAccount mesh\nHost 127.0.0.1\nPort {node.service.imap_port}\n"
        f'User {node.address}\nPassCmd "cat {secret}"\nSSLType None\nAuthMechs LOGIN\n\n'
        "IMAPStore mesh-remote\nAccount mesh\n\n"
        f"MaildirStore mesh-local\nPath {maildir}/\nInbox {maildir}/INBOX\n"
        "SubFolders Verbatim\n\n"
        "Channel mesh\nFar :mesh-remote:\nNear :mesh-local:\nPatterns *\nCreate Near\n"
        "SyncState *\n"
    )


@on_shared_mesh
async def test_mutt_sends_and_mbsync_fetches(
    mail_pair: tuple[MailNode, MailNode], tmp_path: Path
) -> None:
    require(shutil.which("mutt") is not None, "mutt (Debian package mutt) is not installed")
    require(shutil.which("mbsync") is not None, "mbsync (Debian package isync) not installed")
    a, b = mail_pair
    home = tmp_path / "home"
    home.mkdir()
    secret = home / "mail-pass"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    muttrc = home / "muttrc"
    _muttrc(muttrc, a, secret)
    code, out = await _run(
        "mutt", "-n", "-F", str(muttrc), "-s", "sent by mutt", "--", b.address,
        home=home, stdin=b"Hello from mutt over the mesh.\n",
    )  # fmt: skip
    assert code == 0, out
    await wait_for("mutt's mail at B", lambda: b.store.count("INBOX"))

    maildir = home / "Mail"
    maildir.mkdir()
    rc = home / "mbsyncrc"
    _mbsyncrc(rc, b, secret, maildir)
    code, out = await _run("mbsync", "-c", str(rc), "-a", home=home)
    assert code == 0, out
    files = list((maildir / "INBOX").glob("*/*"))
    assert len(files) == 1, out
    fetched = files[0].read_bytes()
    assert b"Subject: sent by mutt" in fetched
    assert b"Hello from mutt over the mesh." in fetched
    header = email.message_from_bytes(fetched, policy=default)
    assert header["From"].addresses[0].addr_spec == a.address
    assert b"Received: from [" in fetched
    # The node's own mailboxes came down too (Sent, Drafts, Trash, Junk).
    assert (maildir / "Sent").is_dir()
    # And mutt left the Sent copy to the node: exactly one at A.
    await wait_for("A's Sent copy", lambda: a.store.count("Sent"))
    assert await a.store.count("Sent") == 1
