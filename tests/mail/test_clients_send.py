"""swaks (Debian package) through a real node's submission port: a message crosses the
mesh; a forged Sender: is refused. Under CI=true a missing swaks fails; elsewhere it skips."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from tests.conftest import require
from tests.mail.helpers import PASSWORD, MailNode, on_shared_mesh, wait_for

pytestmark = pytest.mark.timeout(120)


async def _swaks(node: MailNode, to: str, *extra: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "swaks", "--server", f"127.0.0.1:{node.service.submission_port}",
        "--auth", "PLAIN", "--auth-user", node.address, "--auth-password", PASSWORD,
        "--from", node.address, "--to", to, "--helo", "localhost", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def only_message(node: MailNode) -> bytes:
    """The one message that arrives in ``node``'s INBOX (waited for)."""

    async def arrived() -> bool:
        return await node.store.count("INBOX") == 1

    await wait_for(f"a message at {node.address[:8]}", arrived)
    (uid,) = await node.store.list_uids("INBOX")
    return await node.store.fetch_raw("INBOX", uid) or b""


@on_shared_mesh
async def test_swaks_submits_and_the_mail_crosses_the_mesh(
    mail_pair: tuple[MailNode, MailNode],
) -> None:
    require(shutil.which("swaks") is not None, "swaks (Debian package) is not installed")
    a, b = mail_pair
    code, log = await _swaks(a, b.address, "--header", "Subject: via swaks")
    assert code == 0 and "250 2.0.0 queued as" in log, log

    assert b"Subject: via swaks" in await only_message(b)


@on_shared_mesh
async def test_swaks_with_a_forged_sender_header_is_refused(
    mail_pair: tuple[MailNode, MailNode],
) -> None:
    require(shutil.which("swaks") is not None, "swaks (Debian package) is not installed")
    a, b = mail_pair
    code, log = await _swaks(a, b.address, "--header", f"Sender: {b.address}")
    assert code != 0 and "550 5.7.1 the header Sender:" in log, log
    assert await a.queue.message_count() == 0
