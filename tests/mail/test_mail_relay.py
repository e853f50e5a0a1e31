"""Mail through a relay: A and B are never up at the same time, R always is.

Ten mails each way (one with a 10 MB attachment), submitted by smtplib and read back by
imaplib, each arrive once; R's files hold none of them; a mail whose envelope sender is
not the key that sealed it is refused.
"""

from __future__ import annotations

import asyncio
import os
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from apps.mail.passwords import set_password
from apps.mail.service import MailService
from core.relay.service import RelayVerdict
from tests.core.relay_people import Crowd, Person, until
from tests.mail.helpers import PASSWORD, _mail_config, imap_fetch_all
from tests.mail.test_mail_e2e_lab import _submit

pytestmark = pytest.mark.timeout(600)

BIG = 10 * 1000 * 1000


class MailPerson(Person):
    mail: MailService | None = None

    @property
    def address(self) -> str:
        return f"{self.key.hex()}@mesh"

    async def up(self, *, ready: bool = True) -> None:
        await super().up(ready=ready)
        if not (self.data_dir / "mail-password.json").exists():
            set_password(self.data_dir, PASSWORD)
        self.mail = MailService(
            self.node, _mail_config({"retry_initial": 0.2, "retry_max": 0.5}), self.data_dir
        )
        await self.mail.start()

    async def down(self) -> None:
        if self.mail is not None:
            await self.mail.close()
            self.mail = None
        await super().down()

    @property
    def m(self) -> MailService:
        assert self.mail is not None, "down"
        return self.mail

    async def inbox(self) -> int:
        assert self.m.store is not None
        return await self.m.store.count("INBOX")

    async def queued(self) -> int:
        assert self.m.queue is not None
        return len(await self.m.queue.pending())

    async def send(self, to: str, msg: EmailMessage) -> None:
        assert self.m.submission_port is not None
        await asyncio.to_thread(_submit, self.m.submission_port, self.address, msg, [to])

    async def fetch_all(self) -> list[bytes]:
        assert self.m.imap_port is not None
        return await asyncio.to_thread(imap_fetch_all, self.m.imap_port, self.address, PASSWORD)


async def mail_crowd(crowd: Crowd) -> tuple[MailPerson, MailPerson, MailPerson]:
    return await crowd.trio(MailPerson)


def mails(frm: str, to: str, who: str) -> tuple[list[EmailMessage], list[bytes]]:
    """Ten mails, the last with a 10 MB attachment; and a marker unique to each."""
    out, markers = [], []
    for i in range(10):
        marker = f"{who}-{i}-{os.urandom(8).hex()}"
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = frm, to, f"relayed {who} {i}"
        msg["Message-ID"] = f"<{marker}@test.mesh>"
        msg.set_content(f"body {marker}\n")
        if i == 9:
            msg.add_attachment(
                os.urandom(BIG), maintype="application", subtype="octet-stream", filename="big"
            )
        out.append(msg)
        markers.append(marker.encode())
    return out, markers


async def _at_least(coro_fn: Any, n: int) -> bool:
    return bool(await coro_fn() >= n)


async def _zero(coro_fn: Any) -> bool:
    return bool(await coro_fn() == 0)


async def test_mail_each_way_through_a_relay_never_online_together(tmp_path: Path) -> None:
    async with Crowd(tmp_path) as crowd:
        a, b, r = await mail_crowd(crowd)
        a_addr, b_addr = a.address, b.address
        await b.down()
        to_b, b_markers = mails(a_addr, b_addr, "a2b")
        for msg in to_b:
            await a.send(b_addr, msg)
        await until(lambda: _zero(a.queued), 120)  # all handed to R
        await a.down()

        await b.up()
        await until(lambda: _at_least(b.inbox, 10), 180)
        got = await b.fetch_all()
        assert sorted(m for m in b_markers if any(m in g for g in got)) == sorted(b_markers)
        assert len(got) == 10  # each once
        to_a, a_markers = mails(b_addr, a_addr, "b2a")
        for msg in to_a:
            await b.send(a_addr, msg)
        await until(lambda: _zero(b.queued), 120)
        await b.down()

        for path in (p for p in r.data_dir.rglob("*") if p.is_file()):
            data = path.read_bytes()
            for marker in [*a_markers, *b_markers]:
                assert marker not in data, (path, marker)

        await a.up()
        await until(lambda: _at_least(a.inbox, 10), 180)
        got = await a.fetch_all()
        assert len(got) == 10
        assert all(any(m in g for g in got) for m in a_markers)
        big = [g for g in got if len(g) > BIG]
        assert len(big) == 1
        held = {s.key: s.held for s in await r.service.db.serving()}
        assert held[a.key] == 0


async def test_a_relayed_mail_must_come_from_the_key_that_sealed_it(tmp_path: Path) -> None:
    async with Crowd(tmp_path) as crowd:
        a, b, r = await mail_crowd(crowd)
        inbound = b.m  # the handler registered with B's relay service
        handler = b.service._inbound["mail"]
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = a.address, b.address, "forged"
        msg.set_content("x\n")
        body = f"{a.address}\r\n".encode() + bytes(msg)
        assert await handler(r.key, body) is RelayVerdict.REFUSED  # R claims to be A
        assert await handler(a.key, b"no separator") is RelayVerdict.REFUSED
        assert await handler(a.key, body) is RelayVerdict.ACCEPTED
        assert await handler(a.key, body) is RelayVerdict.ACCEPTED  # a copy: stored once
        assert inbound.store is not None and await inbound.store.count("INBOX") == 1
        other = EmailMessage()
        other["From"], other["To"], other["Subject"] = r.address, b.address, "bad From"
        other.set_content("x\n")
        wrong_from = f"{a.address}\r\n".encode() + bytes(other)
        assert await handler(a.key, wrong_from) is RelayVerdict.REFUSED
