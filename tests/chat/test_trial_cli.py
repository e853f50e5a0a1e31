"""Findings of the outside trial, on the real `mesh chat` command against real `mesh up`
processes: a remote sender's control characters never reach the terminal raw (F1),
non-UTF-8 stdin is refused clearly (F9), sending to a blocked contact is refused, and a
conversation with a non-contact key can be named by the start of its key (F11)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import unicodedata
from pathlib import Path

import pytest

from apps.chat.envelope import Envelope, Kind
from apps.chat.store import DB_FILE, ChatStore, Incoming
from core.identity import Identity
from tests.chat.procs import CLI, ChatProcess, mesh, node_key

pytestmark = pytest.mark.timeout(180)

HOSTILE = "hi\x1b[2J\x1b]0;owned\x07 \x9b31mred\x00 end\r\nline two\tok"
RAW = ("\x1b", "\x07", "\x9b", "\x00", "\r")


async def _received_before(data: Path, sender: Identity, body: str) -> None:
    """B's database holds a message ``sender``'s node signed with ``body``, taken in as
    a request (as by a node from before receivers refused control characters: what is
    stored must still print safely)."""
    now = time.time()
    env = Envelope.build(
        Kind.TEXT,
        sender=sender.public_key,
        signer=sender.public_key,
        recipient=bytes.fromhex(node_key(data)),
        sent_ms=int(now * 1000),
        body=body.encode(),
        sign=sender.sign,
    )
    (data / "chat").mkdir(mode=0o700, parents=True, exist_ok=True)
    store = await ChatStore.open(data / "chat" / DB_FILE)
    try:
        item = Incoming(env, received=now, keep_until=now + 86400, pin=False, request=True)
        assert (await store.commit_incoming(item)).message is not None
    finally:
        await store.close()


def test_a_remote_senders_control_characters_are_printed_escaped(tmp_path: Path) -> None:
    sender = Identity.generate()
    asyncio.run(_received_before(tmp_path / "b", sender, HOSTILE))
    b = ChatProcess(tmp_path / "b")
    try:
        prefix = sender.public_key.hex()[:12]  # not a contact: named by its key's start
        outputs = {
            "history": mesh(b.data, "chat", "history", prefix),
            "history --json": mesh(b.data, "chat", "history", prefix, "--json"),
            "search": mesh(b.data, "chat", "search", "two"),
            "search --json": mesh(b.data, "chat", "search", "two", "--json"),
            "requests": mesh(b.data, "chat", "requests"),
            "requests --json": mesh(b.data, "chat", "requests", "--json"),
        }
        for what, done in outputs.items():
            assert done.returncode == 0, (what, done.stderr)
            assert not any(c in done.stdout for c in RAW), (what, done.stdout)
            assert "end" in done.stdout, (what, done.stdout)
        shown = outputs["history"].stdout
        assert "hi\\x1b[2J\\x1b]0;owned\\x07 \\x9b31mred\\x00 end\\x0d\nline two\tok" in shown
        # JSON still carries the exact body the sender signed
        got = json.loads(outputs["history --json"].stdout)
        assert [m["body"] for m in got] == [HOSTILE]
        assert json.loads(outputs["search --json"].stdout)[0]["body"] == HOSTILE
        assert json.loads(outputs["requests --json"].stdout)[0]["last"]["body"] == HOSTILE
    finally:
        b.stop()


# Issue 20: every class the one sanitizer (core.text) escapes, not only C0/C1.
EVERY_CLASS = (
    "two \x1b]0;TITLE\x07\x1b[2J\x7f\x9b31m\u202eevil\u2066\u200e\u200b\u200d\u2060"
    "\ufeff\u00ad\u2028\u3164\u115f\U000e0041 end"
)


def _unsafe(text: str) -> list[str]:
    cats = ("Cc", "Cf", "Zl", "Zp", "Cs")
    return sorted(
        {
            f"U+{ord(c):04X}"
            for c in text
            if c not in "\n\t" and (unicodedata.category(c) in cats or c in "\u3164\u115f")
        }
    )


def test_bidi_zero_width_and_invisible_characters_are_printed_escaped(tmp_path: Path) -> None:
    sender = Identity.generate()
    asyncio.run(_received_before(tmp_path / "b", sender, EVERY_CLASS))
    b = ChatProcess(tmp_path / "b")
    try:
        prefix = sender.public_key.hex()[:12]
        for args in (
            ("history", prefix),
            ("history", prefix, "--json"),
            ("search", "two"),
            ("search", "two", "--json"),
            ("requests",),
            ("requests", "--json"),
        ):
            done = mesh(b.data, "chat", *args)
            assert done.returncode == 0, (args, done.stderr)
            assert "end" in done.stdout and _unsafe(done.stdout) == [], (args, done.stdout)
            if "--json" in args:  # the JSON still means the exact body
                got = json.loads(done.stdout)[0]
                assert (got.get("last") or got)["body"] == EVERY_CLASS
        shown = mesh(b.data, "chat", "history", prefix).stdout
        assert "\\u202eevil" in shown and "\\x1b]0;TITLE\\x07" in shown
    finally:
        b.stop()


def test_control_characters_and_blocked_contacts_are_refused_at_send(tmp_path: Path) -> None:
    a = ChatProcess(tmp_path / "a")
    try:
        kb, kc = node_key(tmp_path / "b"), node_key(tmp_path / "c")
        for body in ("clear\x1b[2J", "bell\x07", "csi\x9b1m", "nul\x00", "cr\rover"):
            done = mesh(a.data, "chat", "send", kb, "-", stdin=body)  # (no NUL in argv)
            assert done.returncode == 2, (body, done.stderr)
            assert "control character" in done.stderr, done.stderr
        piped = mesh(a.data, "chat", "send", kb, "-", stdin="tabs\tand\r\nlines\r\n")
        assert piped.returncode == 0, piped.stderr

        assert mesh(a.data, "contacts", "add", kb, "--alias", "bob").returncode == 0
        assert mesh(a.data, "contacts", "block", "bob").returncode == 0
        done = mesh(a.data, "chat", "send", "bob", "still there?")
        assert done.returncode == 2 and "you blocked this contact; unblock first" in done.stderr
        assert mesh(a.data, "contacts", "unblock", "bob").returncode == 0
        assert mesh(a.data, "chat", "send", "bob", "back").returncode == 0

        # a conversation with a raw key that is not a contact: named by its key's start
        assert mesh(a.data, "chat", "send", kc, "to a raw key").returncode == 0
        done = mesh(a.data, "chat", "history", kc[:10], "--json")
        assert done.returncode == 0, done.stderr
        assert [m["body"] for m in json.loads(done.stdout)] == ["to a raw key"]
        shown = json.loads(mesh(a.data, "chat", "history", "bob", "--json").stdout)
        assert [m["body"] for m in shown] == ["tabs\tand\nlines", "back"]
        unknown = mesh(a.data, "chat", "history", "feedface00")
        assert unknown.returncode == 2 and "no contact is called" in unknown.stderr

        # where refusals show: chat.info's counts, also as `mesh chat info`
        info = mesh(a.data, "chat", "info", "--json")
        assert info.returncode == 0, info.stderr
        assert json.loads(info.stdout)["key"] == node_key(a.data)
        assert json.loads(info.stdout)["refused"] == {}
        shown = mesh(a.data, "chat", "info")
        assert shown.returncode == 0 and "refused  none" in shown.stdout, shown.stdout
    finally:
        a.stop()


def test_non_utf8_stdin_is_refused_as_not_utf8_text(tmp_path: Path) -> None:
    key = node_key(tmp_path / "b")
    done = subprocess.run(
        [*CLI, "--data-dir", str(tmp_path / "a"), "chat", "send", key, "-"],
        input=b"caf\xe9 \xff\xfe",
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 2, done.stderr
    assert b"the message is not UTF-8 text" in done.stderr
