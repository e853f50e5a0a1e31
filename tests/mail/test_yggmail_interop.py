"""Mail with the real Yggmail, both ways, over Yggmail's own transport.

A meshsuite node (embedded backend, a TCP listener on loopback) and a real Yggmail node
peered to it: mail submitted at one side with smtplib is read at the other with
imaplib. The mail crosses as SMTP in QUIC in Yggdrasil session traffic (yggquic), not
over IPv6. A missing Yggmail binary fails under CI (see ``yggmail_process``).
"""

from __future__ import annotations

import asyncio
import email
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import default
from pathlib import Path

import pytest

from core.config import NodeConfig
from core.identity import Identity
from core.node import Node
from tests.lab.lab import free_port
from tests.mail.helpers import PASSWORD, MailNode, wait_for
from tests.mail.test_mail_e2e_lab import _imap_fetch_all
from tests.mail.yggmail_process import Yggmail, yggmail_binary

pytestmark = pytest.mark.slow

SUBJECT = "Grüße über Yggmail ✓"
BODY = "Żółć, naïve café: 8-bit body.\n.a line that starts with a dot\n"


@dataclass
class Pair:
    ours: MailNode
    theirs: Yggmail
    listen: str

    @property
    def our_yggmail(self) -> str:
        return f"{self.ours.node.key.hex()}@yggmail"


async def _linked(node: Node, key_hex: str, timeout: float = 30.0) -> None:
    async def up() -> bool:
        return any(
            p.up and p.key is not None and p.key.hex() == key_hex for p in await node.peers()
        )

    await wait_for("Yggmail's link to our node", up, timeout=timeout)


async def _our_node(data_dir: Path, listen: str, identity: Identity | None = None) -> MailNode:
    data_dir.mkdir(parents=True, exist_ok=True)
    config = NodeConfig(data_dir=data_dir, backend="embedded", listen=(listen,))
    node = await Node.open(config, identity or Identity.generate())
    return await MailNode.adopt(node, data_dir)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    yggmail_binary()  # fails under CI, skips elsewhere, when it is missing
    listen = f"tcp://127.0.0.1:{free_port()}"
    ours = await _our_node(tmp_path / "ours", listen)
    theirs = Yggmail(tmp_path / "yggmail", [listen])
    try:
        await theirs.start()
        await _linked(ours.node, theirs.key)
        yield Pair(ours, theirs, listen)
    finally:
        await theirs.stop()
        await ours.close()


def _message(frm: str, to: list[str], subject: str = SUBJECT, body: str = BODY) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = frm, ", ".join(to), subject
    msg.set_content(body, cte="8bit")
    return msg


def _submit(node: MailNode, msg: EmailMessage, to: list[str], sender: str) -> None:
    import smtplib

    assert node.service.submission_port
    with smtplib.SMTP("127.0.0.1", node.service.submission_port, timeout=30) as smtp:
        smtp.login(str(node.node.mail_address), PASSWORD)
        assert smtp.send_message(msg, from_addr=sender, to_addrs=to) == {}


async def _yggmail_inbox(theirs: Yggmail, count: int, timeout: float = 60.0) -> list[bytes]:
    async def enough() -> list[bytes] | None:
        raws = await asyncio.to_thread(theirs.fetch_all)
        return raws if len(raws) >= count else None

    result: list[bytes] = await wait_for(f"{count} mail(s) at Yggmail", enough, timeout=timeout)
    return result


async def _our_inbox(ours: MailNode, count: int, timeout: float = 60.0) -> list[bytes]:
    async def enough() -> bool:
        return await ours.store.count("INBOX") >= count

    await wait_for(f"{count} mail(s) in our INBOX", enough, timeout=timeout)
    assert ours.service.imap_port
    return await asyncio.to_thread(
        _imap_fetch_all, ours.service.imap_port, str(ours.node.mail_address)
    )


async def test_mail_to_a_yggmail_user_and_the_reply_back(pair: Pair) -> None:
    ours, theirs = pair.ours, pair.theirs
    # meshsuite -> Yggmail: header From is our @yggmail address, UTF-8 subject, 8-bit body
    msg = _message(pair.our_yggmail, [theirs.address])
    await asyncio.to_thread(_submit, ours, msg, [theirs.address], pair.our_yggmail)
    raws = await _yggmail_inbox(theirs, 1)
    got = email.message_from_bytes(raws[0], policy=default)
    assert got["Subject"] == SUBJECT
    assert got["From"] == pair.our_yggmail
    assert got.get_content().replace("\r\n", "\n") == BODY
    assert f"from Yggmail {ours.node.key.hex()}" in str(got["Received"])

    # Yggmail -> meshsuite: the reply arrives in our INBOX from the Yggmail address
    reply = _message(theirs.address, [pair.our_yggmail], "Re: " + SUBJECT, "Dzięki! ✓\n")
    await asyncio.to_thread(theirs.submit, reply, [pair.our_yggmail])
    ours_raws = await _our_inbox(ours, 1)
    back = email.message_from_bytes(ours_raws[-1], policy=default)
    assert back["From"] == theirs.address
    assert back["Subject"] == "Re: " + SUBJECT
    assert back.get_content().replace("\r\n", "\n") == "Dzięki! ✓\n"
    assert theirs.key in str(back["Received"])

    # and our answer to that goes back over Yggmail's transport too
    again = _message(pair.our_yggmail, [theirs.address], "Re: Re: " + SUBJECT)
    await asyncio.to_thread(_submit, ours, again, [theirs.address], pair.our_yggmail)
    raws = await _yggmail_inbox(theirs, 2)
    assert {email.message_from_bytes(r, policy=default)["Subject"] for r in raws} == {
        SUBJECT,
        "Re: Re: " + SUBJECT,
    }
    quic = ours.node.status  # the counters show a clean exchange
    status = await quic()
    stats = status["key_quic"]["stats"]
    assert stats["bad_certificate"] == 0 and stats["garbage"] == 0


class _NoRawTraffic:
    """A node as the daemon backend gives it: everything but raw session traffic."""

    key_datagrams_supported = False

    def __init__(self, node: Node) -> None:
        self._node = node

    def __getattr__(self, name: str) -> object:
        return getattr(self._node, name)


async def test_without_the_transport_yggmail_recipients_are_refused_with_the_reason(
    tmp_path: Path,
) -> None:
    import smtplib

    from apps.mail.passwords import set_password
    from apps.mail.service import MailService
    from tests.mail.helpers import _mail_config

    data_dir = tmp_path / "node"
    data_dir.mkdir()
    set_password(data_dir, PASSWORD)
    config = NodeConfig(data_dir=data_dir, backend="embedded")
    node = await Node.open(config, Identity.generate())
    service = MailService(_NoRawTraffic(node), _mail_config({}), data_dir)  # type: ignore[arg-type]
    try:
        await service.start()
        assert service.endpoints()["yggmail"].startswith("the yggdrasil daemon backend")
        own, someone = str(node.mail_address), "ab" * 32

        def dialogue() -> tuple[tuple[int, bytes], tuple[int, bytes]]:
            assert service.submission_port
            with smtplib.SMTP("127.0.0.1", service.submission_port, timeout=30) as smtp:
                smtp.login(own, PASSWORD)
                assert smtp.mail(own)[0] == 250
                return smtp.rcpt(f"{someone}@yggmail"), smtp.rcpt(f"{someone}@mesh")

        yggmail, mesh = await asyncio.to_thread(dialogue)
        assert yggmail[0] == 550 and b"daemon backend carries IPv6 only" in yggmail[1]
        assert mesh[0] == 250  # @mesh is not affected
        assert await service.queue.pending() == []  # type: ignore[union-attr]
        assert node.key_datagrams_supported  # the real embedded node underneath has it
    finally:
        await service.close()
        await node.close()
