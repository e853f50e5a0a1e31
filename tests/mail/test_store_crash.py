"""kill -9 while delivering: the store reopens intact and no acknowledged UID is lost."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

from apps.mail.store import MailStore

WRITER = """
import asyncio, sys
from pathlib import Path
from apps.mail.store import MailStore

async def main() -> None:
    store = await MailStore.open(Path(sys.argv[1]))
    n = 0
    while True:
        n += 1
        raw = b"Subject: m%d\\r\\n\\r\\n" % n + b"x" * (n % 5000) + b"\\r\\n"
        uid = await store.deliver("INBOX", raw, dedup_key=f"k{n}")
        sys.stdout.write(f"{uid} {n}\\n")
        sys.stdout.flush()

asyncio.run(main())
"""


async def test_sigkill_during_delivery_loses_nothing_acknowledged(tmp_path: Path) -> None:
    db_path = tmp_path / "mail.db"
    root = Path(__file__).resolve().parents[2]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WRITER,
        str(db_path),
        cwd=root,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    acknowledged: dict[int, int] = {}
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while len(acknowledged) < 150 and time.monotonic() < deadline:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line, "writer exited early"
            uid, n = map(int, line.split())
            acknowledged[uid] = n
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert len(acknowledged) >= 150

    db = sqlite3.connect(db_path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()
    store = await MailStore.open(db_path)
    try:
        assert await store.integrity_check() == "ok"
        for uid, n in acknowledged.items():
            raw = await store.fetch_raw("INBOX", uid)
            assert raw is not None and raw.startswith(b"Subject: m%d\r\n" % n)
        highest = max(await store.list_uids("INBOX"))
        assert highest >= max(acknowledged)
        new_uid = await store.deliver("INBOX", b"Subject: after\r\n\r\nx\r\n")
        assert new_uid == highest + 1
        assert await store.deliver("INBOX", b"Subject: dup\r\n\r\n", dedup_key="k1") is None
    finally:
        await store.close()
