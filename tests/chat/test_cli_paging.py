"""Issue 20 findings 2 and 3 on the real `mesh chat` command against a real `mesh up`:
no control reply grows with data (history of 70 x 16 KB messages, hundreds of security
records), the CLI pages through, and security records are listed and acknowledged."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from apps.chat.envelope import MAX_BODY, Envelope, Kind
from apps.chat.store import DB_FILE, SECURITY_TOTAL, ChatStore, Incoming
from core.identity import Identity
from tests.chat.procs import ChatProcess, mesh, node_key

pytestmark = pytest.mark.timeout(240)


async def _fill(data: Path, sender: Identity, bodies: int, records: int) -> None:
    """B's store before its node starts: ``bodies`` 16 KB messages from ``sender`` and
    ``records`` security records with long details."""
    own = bytes.fromhex(node_key(data))
    (data / "chat").mkdir(mode=0o700, parents=True, exist_ok=True)
    store = await ChatStore.open(data / "chat" / DB_FILE)
    try:
        now = time.time()
        for i in range(bodies):
            body = (f"{i:04d} " + "é" * MAX_BODY)[: MAX_BODY // 2]  # 16 KB of UTF-8
            env = Envelope.build(
                Kind.TEXT, sender=sender.public_key, signer=sender.public_key, recipient=own,
                sent_ms=int(now * 1000) + i, body=body.encode(), sign=sender.sign,
            )  # fmt: skip
            item = Incoming(env, received=now, keep_until=now + 86400, pin=False, request=True)
            assert (await store.commit_incoming(item)).message is not None
        for i in range(records):
            await store.add_security(sender.public_key, "forged-sender", "d" * 3000, f"200::{i:x}")
    finally:
        await store.close()


def test_big_history_and_many_security_records_page_through(tmp_path: Path) -> None:
    sender = Identity.generate()
    asyncio.run(_fill(tmp_path / "b", sender, bodies=70, records=SECURITY_TOTAL + 100))
    b = ChatProcess(tmp_path / "b")
    try:
        who = sender.public_key.hex()[:16]
        done = mesh(b.data, "chat", "history", who, "--json")  # was: exit 1, reply > 1 MiB
        assert done.returncode == 0, done.stderr
        got = json.loads(done.stdout)
        assert [m["body"][:4] for m in got] == [f"{i:04d}" for i in range(70)]
        shown = mesh(b.data, "chat", "history", who, "--limit", "5")
        assert shown.returncode == 0 and shown.stdout.count("\n") == 5, shown.stdout[-300:]

        listed = mesh(b.data, "chat", "security", "--json")
        assert listed.returncode == 0, listed.stderr
        assert len(json.loads(listed.stdout)) == 100  # the default page count
        every = json.loads(mesh(b.data, "chat", "security", "--json", "--limit", "1000").stdout)
        assert len(every) == SECURITY_TOTAL  # paged: 1.5 MB of records in all
        assert len({r["id"] for r in every}) == SECURITY_TOTAL
        text = mesh(b.data, "chat", "security", "--limit", "2")
        assert text.returncode == 0 and "NEW" in text.stdout and "forged-sender" in text.stdout
        assert f"{SECURITY_TOTAL} unacknowledged of {SECURITY_TOTAL}" in text.stdout

        one = mesh(b.data, "chat", "security", "ack", every[0]["id"])
        assert one.returncode == 0 and "acknowledged 1 " in one.stdout, one.stderr
        missing = mesh(b.data, "chat", "security", "ack", "99999999")
        assert missing.returncode == 1 and "no security record" in missing.stderr
        usage = mesh(b.data, "chat", "security", "ack")
        assert usage.returncode == 2 and "usage: mesh chat security" in usage.stderr
        rest = mesh(b.data, "chat", "security", "ack", "--all")
        assert rest.returncode == 0 and f"acknowledged {SECURITY_TOTAL - 1} " in rest.stdout
        after = json.loads(mesh(b.data, "chat", "security", "--json", "--limit", "1000").stdout)
        assert all(r["acknowledged"] for r in after)
    finally:
        b.stop()
