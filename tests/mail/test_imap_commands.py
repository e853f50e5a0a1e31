"""Every IMAP command driven through Python's imaplib against a real server and store."""

from __future__ import annotations

import asyncio
import base64
import imaplib
import re
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from apps.mail.imap import ImapServer, start_imap_server
from apps.mail.store import MailStore

USER = "ab" * 32 + "@mesh"
PASSWORD = "correct horse"

SIMPLE = (
    b"From: Alice <alice@a.mesh>\r\nTo: Bob <bob@b.mesh>\r\nCc: carol@c.mesh\r\n"
    b"Subject: lunch plans\r\nDate: Tue, 05 Mar 2024 10:00:00 +0000\r\n"
    b"Message-ID: <m1@a.mesh>\r\n\r\nShall we meet at noon?\r\n"
)
INNER = (
    b"From: Dave <dave@d.mesh>\r\nSubject: inner\r\nContent-Type: multipart/alternative;"
    b' boundary="in"\r\n\r\n--in\r\nContent-Type: text/plain\r\n\r\nplain inner\r\n'
    b"--in\r\nContent-Type: text/html\r\n\r\n<p>html inner</p>\r\n--in--\r\n"
)
MULTI = (
    b"From: =?utf-8?q?J=C3=BCrgen?= <jurgen@j.mesh>\r\nTo: bob@b.mesh\r\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= report\r\nDate: Fri, 01 Mar 2024 08:00:00 +0100\r\n"
    b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"\r\n\r\n'
    b"preamble\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\nK=C3=A4se und Brot, xylophone\r\n"
    b"--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
    b'Content-Disposition: attachment; filename="data.bin"\r\n\r\nAAECAw==\r\n'
    b"--b1\r\nContent-Type: message/rfc822\r\n\r\n" + INNER + b"\r\n--b1--\r\n"
)


@dataclass
class Env:
    store: MailStore
    server: ImapServer
    loop: asyncio.AbstractEventLoop

    @property
    def port(self) -> int:
        return self.server.port

    def client(self, login: bool = True) -> imaplib.IMAP4:
        m = imaplib.IMAP4("127.0.0.1", self.port, timeout=20)
        if login:
            m.login(USER, PASSWORD)
        return m

    def call(self, coro: Any) -> Any:
        """Run a store coroutine on the server's loop from the client thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(20)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    store = await MailStore.open(tmp_path / "mail.db")

    async def authenticator(user: str, password: str) -> bool:
        return password == PASSWORD

    server = ImapServer(store, authenticator, username=USER)
    await server.start("127.0.0.1", 0)
    try:
        yield Env(store, server, asyncio.get_running_loop())
    finally:
        await server.close()
        await store.close()


async def run(fn: Callable[[], None]) -> None:
    await asyncio.to_thread(fn)


def tagged(m: imaplib.IMAP4, name: str, *args: Any) -> tuple[str, bytes]:
    """Send a command; the tagged status and its text (imaplib drops response codes)."""
    tag = m._command(name, *args)  # type: ignore[attr-defined]
    typ, data = m._command_complete(name, tag)  # type: ignore[attr-defined]
    return typ, data[0]


# --- any state / authentication -------------------------------------------------------------


async def test_capability_noop_logout_and_login(env: Env) -> None:
    def client() -> None:
        m = env.client(login=False)
        for cap in ("IMAP4REV1", "IDLE", "UIDPLUS", "MOVE", "SPECIAL-USE", "LITERAL+", "SASL-IR"):
            assert cap in m.capabilities
        assert m.noop()[0] == "OK"
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            m.login(USER, "wrong")
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            m.login("someone@mesh", PASSWORD)
        m.send(b"x1 SELECT INBOX\r\n")  # imaplib itself refuses this before LOGIN
        assert m.readline() == b"x1 BAD SELECT is not allowed in the not authenticated state\r\n"
        assert m.login(USER, PASSWORD)[0] == "OK"
        assert m.capability()[0] == "OK"
        assert m.namespace() == ("OK", [b'(("" "/")) NIL NIL'])
        m.send(b'x2 ID ("name" "imaplib" "version" "3.11")\r\n')
        assert m.readline() == b'* ID ("name" "meshsuite")\r\n'
        assert m.readline() == b"x2 OK ID completed\r\n"
        assert m.logout()[0] == "BYE"

    await run(client)


async def test_authenticate_plain_with_continuation_and_sasl_ir(env: Env) -> None:
    def client() -> None:
        m = env.client(login=False)
        typ, _ = m.authenticate("PLAIN", lambda _: f"\0{USER}\0{PASSWORD}".encode())
        assert typ == "OK" and m.state == "AUTH"
        m.logout()
        m = env.client(login=False)
        token = base64.b64encode(f"{USER}\0{USER}\0{PASSWORD}".encode()).decode()
        assert tagged(m, "AUTHENTICATE", "PLAIN", token)[0] == "OK"
        m.state = "AUTH"  # imaplib only tracks its own authenticate()
        assert m.select("INBOX")[0] == "OK"
        m.logout()
        m = env.client(login=False)
        bad = base64.b64encode(f"\0{USER}\0nope".encode()).decode()
        typ, text = tagged(m, "AUTHENTICATE", "PLAIN", bad)
        assert typ == "NO" and b"AUTHENTICATIONFAILED" in text
        m.logout()

    await run(client)


async def test_too_many_failed_logins_end_the_connection(env: Env) -> None:
    def client() -> None:
        m = env.client(login=False)
        for _ in range(5):
            with pytest.raises(imaplib.IMAP4.error):
                m.login(USER, "bad")
        with pytest.raises(imaplib.IMAP4.abort):
            m.noop()
        m.shutdown()

    await run(client)


# --- mailboxes ------------------------------------------------------------------------------


async def test_list_lsub_special_use_and_list_extended(env: Env) -> None:
    def client() -> None:
        m = env.client()
        typ, lines = m.list()
        assert typ == "OK"
        assert b'(\\HasNoChildren) "/" INBOX' in lines
        assert b'(\\HasNoChildren \\Sent) "/" Sent' in lines
        for use in (b"\\Drafts", b"\\Trash", b"\\Junk"):
            assert any(use in line for line in lines)
        assert m.list('""', '""')[1] == [b'(\\Noselect) "/" ""']
        _, _special = m._simple_command("LIST", "(SPECIAL-USE)", '""', "*")  # type: ignore[attr-defined]
        names = [line.split()[-1] for line in m.untagged_responses.pop("LIST")]
        assert sorted(names) == [b"Drafts", b"Junk", b"Sent", b"Trash"]
        m._simple_command("LIST", '""', "%", "RETURN", "(SUBSCRIBED)")  # type: ignore[attr-defined]
        listed = m.untagged_responses.pop("LIST")
        assert all(b"\\Subscribed" in line for line in listed)
        assert m.unsubscribe("Junk")[0] == "OK"
        typ, subs = m.lsub()
        assert typ == "OK" and not any(b"Junk" in s for s in subs) and len(subs) == 4
        assert m.subscribe("Junk")[0] == "OK"
        assert len(m.lsub()[1]) == 5
        m.logout()

    await run(client)


async def test_create_rename_delete_with_hierarchy(env: Env) -> None:
    def client() -> None:
        m = env.client()
        assert m.create("Projects/Mesh")[0] == "OK"
        typ, text = tagged(m, "CREATE", "Projects/Mesh")
        assert typ == "NO" and b"ALREADYEXISTS" in text
        lines = m.list('""', "Projects*")[1]
        assert b'(\\Noselect \\HasChildren) "/" Projects' in lines
        assert b'(\\HasNoChildren) "/" Projects/Mesh' in lines
        assert m.list('""', "%")[1].count(b'(\\Noselect \\HasChildren) "/" Projects') == 1
        assert m.create('"Work Stuff"')[0] == "OK"
        assert m.list('""', "Work*")[1] == [b'(\\HasNoChildren) "/" "Work Stuff"']
        assert m.rename("Projects/Mesh", "Archive/Mesh")[0] == "OK"
        assert m.list('""', "Archive/*")[1] == [b'(\\HasNoChildren) "/" Archive/Mesh']
        assert m.delete("Archive/Mesh")[0] == "OK"
        typ, text = tagged(m, "DELETE", "Archive/Mesh")
        assert typ == "NO" and b"NONEXISTENT" in text
        assert tagged(m, "DELETE", "INBOX")[0] == "NO"
        m.logout()

    await run(client)


async def test_select_examine_status(env: Env) -> None:
    await env.store.deliver("INBOX", SIMPLE, flags=["\\Seen"])
    await env.store.deliver("INBOX", SIMPLE, flags=["$Work"])
    validity = (await env.store.mailbox("INBOX")).uidvalidity

    def client() -> None:
        m = env.client()
        typ, text = tagged(m, "SELECT", "INBOX")
        assert typ == "OK" and text.startswith(b"[READ-WRITE]")
        m.state = "SELECTED"
        u = m.untagged_responses
        assert u["EXISTS"] == [b"2"] and u["RECENT"] == [b"2"]
        assert u["UIDVALIDITY"] == [str(validity).encode()] and u["UIDNEXT"] == [b"3"]
        assert u["UNSEEN"] == [b"2"]
        assert u["FLAGS"] == [b"(\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work)"]
        assert u["PERMANENTFLAGS"] == [b"(\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work \\*)"]
        typ, text = tagged(m, "EXAMINE", "INBOX")
        assert typ == "OK" and text.startswith(b"[READ-ONLY]")
        m.state = "SELECTED"
        m.untagged_responses.pop("READ-ONLY")  # else imaplib refuses every later command
        assert m.untagged_responses["RECENT"][-1] == b"0"  # claimed by the first SELECT
        assert m.untagged_responses["PERMANENTFLAGS"][-1] == b"()"
        m.send(b"x2 STORE 1 +FLAGS \\Flagged\r\n")  # imaplib refuses it itself when READ-ONLY
        assert m.readline() == b"x2 NO the mailbox is selected read-only (EXAMINE)\r\n"
        typ, data = m.status("INBOX", "(MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)")
        assert data == [
            f"INBOX (MESSAGES 2 RECENT 0 UIDNEXT 3 UIDVALIDITY {validity} UNSEEN 1)".encode()
        ]
        assert m.status("Nope", "(MESSAGES)")[0] == "NO"
        assert tagged(m, "SELECT", "Nope")[0] == "NO"
        with pytest.raises(imaplib.IMAP4.error, match="not allowed in the authenticated"):
            m.fetch("1", "(UID)")  # a failed SELECT leaves no mailbox selected
        m.logout()

    await run(client)


async def test_append_with_flags_date_and_appenduid(env: Env) -> None:
    validity = (await env.store.mailbox("Drafts")).uidvalidity

    def client() -> None:
        m = env.client()
        when = '"05-Mar-2024 10:11:12 +0200"'
        typ, data = m.append("Drafts", "(\\Draft $Later)", when, SIMPLE)
        assert typ == "OK" and data[0].startswith(f"[APPENDUID {validity} 1]".encode())
        typ, data = m.append("Drafts", None, None, MULTI)
        assert data[0].startswith(f"[APPENDUID {validity} 2]".encode())
        typ, text = tagged(m, "APPEND", "Nowhere", "{1+}\r\nx")  # a LITERAL+ message
        assert typ == "NO" and b"TRYCREATE" in text
        m.select("Drafts")
        typ, data = m.fetch("1", "(FLAGS INTERNALDATE RFC822.SIZE)")
        assert data == [
            b'1 (FLAGS (\\Draft \\Recent $Later) INTERNALDATE " 5-Mar-2024 10:11:12 +0200" '
            b"RFC822.SIZE %d)" % len(SIMPLE)
        ]
        m.logout()

    await run(client)
    assert await env.store.fetch_raw("Drafts", 2) == MULTI


# --- FETCH ----------------------------------------------------------------------------------


def _fetch_one(m: imaplib.IMAP4, item: str) -> bytes:
    typ, data = m.fetch("1", f"({item})")
    assert typ == "OK", data
    if isinstance(data[0], tuple):
        return data[0][1]
    quoted = re.fullmatch(rb'1 \(\S+ "(.*)"\)', data[0], re.S)
    assert quoted is not None, data
    return re.sub(rb"\\(.)", rb"\1", quoted.group(1))


async def test_fetch_sections_byte_exact(env: Env) -> None:
    await env.store.deliver("INBOX", MULTI)

    def client() -> None:
        m = env.client()
        m.select("INBOX")
        head, _, body = MULTI.partition(b"\r\n\r\n")
        assert _fetch_one(m, "BODY.PEEK[]") == MULTI
        assert _fetch_one(m, "BODY.PEEK[HEADER]") == head + b"\r\n\r\n"
        assert _fetch_one(m, "BODY.PEEK[TEXT]") == body
        assert _fetch_one(m, "BODY.PEEK[1]") == b"K=C3=A4se und Brot, xylophone"
        assert _fetch_one(m, "BODY.PEEK[1.MIME]") == (
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        )
        assert _fetch_one(m, "BODY.PEEK[3]") == INNER
        assert _fetch_one(m, "BODY.PEEK[3.HEADER]") == INNER.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"
        assert _fetch_one(m, "BODY.PEEK[3.1]") == b"plain inner"
        assert _fetch_one(m, "BODY.PEEK[3.2]") == b"<p>html inner</p>"
        assert _fetch_one(m, "BODY.PEEK[HEADER.FIELDS (To Date)]") == (
            b"To: bob@b.mesh\r\nDate: Fri, 01 Mar 2024 08:00:00 +0100\r\n\r\n"
        )
        not_fields = _fetch_one(m, "BODY.PEEK[HEADER.FIELDS.NOT (From Subject Content-Type)]")
        assert not_fields == (
            b"To: bob@b.mesh\r\nDate: Fri, 01 Mar 2024 08:00:00 +0100\r\nMIME-Version: 1.0\r\n\r\n"
        )
        _typ, data = m.fetch("1", "(BODY.PEEK[]<0.4>)")
        assert data[0] == (b"1 (BODY[]<0> {4}", b"From") or data == [b'1 (BODY[]<0> "From")']
        assert _fetch_one(m, "RFC822.HEADER") == head + b"\r\n\r\n"
        assert m.fetch("1", "(FLAGS)")[1] == [b"1 (FLAGS (\\Recent))"]  # PEEK kept it unseen
        assert _fetch_one(m, "RFC822.TEXT") == body
        assert m.fetch("1", "(FLAGS)")[1] == [b"1 (FLAGS (\\Recent \\Seen))"]
        m.logout()

    await run(client)


async def test_fetch_envelope_bodystructure_and_implicit_seen(env: Env) -> None:
    await env.store.deliver("INBOX", SIMPLE)
    await env.store.deliver("INBOX", MULTI)

    def client() -> None:
        m = env.client()
        m.select("INBOX")
        _, data = m.fetch("1", "(UID ENVELOPE)")
        assert data == [
            b'1 (UID 1 ENVELOPE ("Tue, 05 Mar 2024 10:00:00 +0000" "lunch plans" '
            b'(("Alice" NIL "alice" "a.mesh")) (("Alice" NIL "alice" "a.mesh")) '
            b'(("Alice" NIL "alice" "a.mesh")) (("Bob" NIL "bob" "b.mesh")) '
            b'((NIL NIL "carol" "c.mesh")) NIL NIL "<m1@a.mesh>"))'
        ]
        _, data = m.fetch("2", "(BODYSTRUCTURE)")
        structure = data[0]
        assert b'("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "QUOTED-PRINTABLE" 29 1' in structure
        assert b'("ATTACHMENT" ("FILENAME" "data.bin"))' in structure
        assert b'"MESSAGE" "RFC822" NIL NIL NIL "7BIT" %d' % len(INNER) in structure
        assert b'"ALTERNATIVE" ("BOUNDARY" "in")' in structure
        assert structure.endswith(b'"MIXED" ("BOUNDARY" "b1") NIL NIL NIL))')
        _, data = m.fetch("2", "(BODY)")
        assert b"ATTACHMENT" not in data[0] and data[0].startswith(b'2 (BODY (("TEXT" "PLAIN"')
        assert data[0].endswith(b'"MIXED"))')
        _, data = m.fetch("1:*", "(FAST)")
        assert len(data) == 2 and b"RFC822.SIZE" in data[0] and b"INTERNALDATE" in data[0]
        _, data = m.fetch("1", "(BODY[TEXT])")
        assert data[0][1] == b"Shall we meet at noon?\r\n"
        assert b"FLAGS (\\Recent \\Seen)" in data[1]  # implicit \Seen reported
        _typ, data = m.uid("FETCH", "2", "(RFC822)")
        assert data[0][0].startswith(b"2 (UID 2 RFC822 {") and data[0][1] == MULTI
        with pytest.raises(imaplib.IMAP4.error, match="unknown FETCH item"):
            m.fetch("1:*", "(NOSUCHITEM)")
        m.logout()

    await run(client)


# --- STORE / COPY / MOVE / EXPUNGE ----------------------------------------------------------


async def test_store_copy_move_expunge_uidplus(env: Env) -> None:
    for _ in range(4):
        await env.store.deliver("INBOX", SIMPLE)
    trash = (await env.store.mailbox("Trash")).uidvalidity
    junk = (await env.store.mailbox("Junk")).uidvalidity

    def client() -> None:
        m = env.client()
        m.select("INBOX")
        assert m.store("1:2", "+FLAGS", "(\\Flagged $Work)")[1] == [
            b"1 (FLAGS (\\Flagged \\Recent $Work))",
            b"2 (FLAGS (\\Flagged \\Recent $Work))",
        ]
        assert m.store("1", "-FLAGS.SILENT", "$Work")[1] == [None]
        assert m.uid("STORE", "2", "FLAGS", "(\\Answered)")[1] == [
            b"2 (FLAGS (\\Answered \\Recent) UID 2)"
        ]
        typ, text = tagged(m, "COPY", "1:2", "Trash")
        assert typ == "OK" and text.startswith(f"[COPYUID {trash} 1:2 1:2]".encode())
        typ, text = tagged(m, "UID", "COPY", "9", "Trash")
        assert typ == "OK" and b"COPYUID" not in text
        typ, text = tagged(m, "COPY", "1", "Missing")
        assert typ == "NO" and b"TRYCREATE" in text
        typ, text = tagged(m, "UID", "MOVE", "3", "Junk")
        assert typ == "OK"
        assert m.untagged_responses.pop("COPYUID")[-1] == f"{junk} 3 1".encode()
        assert m.untagged_responses.pop("EXPUNGE") == [b"3"]
        m.store("1", "+FLAGS.SILENT", "\\Deleted")
        m.store("3", "+FLAGS.SILENT", "\\Deleted")  # UID 4 is now sequence number 3
        typ, text = tagged(m, "UID", "EXPUNGE", "4")
        assert typ == "OK" and m.untagged_responses.pop("EXPUNGE") == [b"3"]
        typ, data = m.expunge()
        assert data == [b"1"]
        assert m.fetch("1:*", "(UID)")[1] == [b"1 (UID 2)"]
        m.store("1", "+FLAGS.SILENT", "\\Deleted")
        assert m.close()[0] == "OK" and m.state == "AUTH"
        m.select("Trash")
        assert m.fetch("1:*", "(UID FLAGS)")[1] == [
            b"1 (UID 1 FLAGS (\\Flagged \\Recent))",
            b"2 (UID 2 FLAGS (\\Answered \\Recent))",
        ]
        assert m.unselect()[0] == "OK" and m.state == "AUTH"
        m.logout()

    await run(client)
    assert await env.store.list_uids("INBOX") == []
    assert await env.store.list_uids("Junk") == [1]


# --- SEARCH ---------------------------------------------------------------------------------


def _msg(subject: str, sender: str, date: str, body: str, extra: str = "") -> bytes:
    return (
        f"From: {sender}\r\nTo: team@t.mesh\r\nSubject: {subject}\r\nDate: {date}\r\n{extra}"
        f"\r\n{body}\r\n"
    ).encode()


async def test_search_real_criteria(env: Env) -> None:
    store = env.store
    day = datetime(2024, 3, 5, 12, 0, tzinfo=UTC)
    await store.deliver(
        "INBOX",
        _msg("Budget 2024", "alice@a.mesh", "Mon, 04 Mar 2024 09:00:00 +0000", "numbers here"),
        flags=["\\Seen", "\\Answered"],
        internal_date=day.replace(day=4),
    )
    await store.deliver(
        "INBOX",
        _msg("Lunch?", "Bob <bob@b.mesh>", "Tue, 05 Mar 2024 11:00:00 +0000", "pizza " * 200),
        flags=["\\Flagged", "$Work"],
        internal_date=day,
    )
    await store.deliver(
        "INBOX",
        _msg(
            "=?utf-8?q?Gr=C3=BC=C3=9Fe?=",
            "carol@c.mesh",
            "Wed, 06 Mar 2024 08:00:00 +0000",
            "K=C3=A4sebrot",
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: "
            "quoted-printable\r\nX-Priority: 1\r\n",
        ),
        flags=["\\Deleted", "\\Draft"],
        internal_date=day.replace(day=6),
    )

    def client() -> None:
        m = env.client()
        m.select("INBOX")
        m.store("3", "-FLAGS.SILENT", "\\Recent")

        def s(*criteria: str) -> list[int]:
            typ, data = m.search(None, *criteria)
            assert typ == "OK", data
            return [int(x) for x in data[0].split()]

        assert s("ALL") == [1, 2, 3]
        assert s("FROM", "bob") == [2]
        assert s("FROM", '"BOB@B.MESH"') == [2]
        assert s("TO", "team") == [1, 2, 3]
        assert s("CC", "x") == []
        assert s("SUBJECT", "budget") == [1]
        assert s("BODY", "pizza") == [2]
        assert s("TEXT", "budget") == [1] and s("TEXT", "numbers") == [1]
        assert s("HEADER", "X-Priority", "1") == [3]
        assert s("HEADER", "X-Priority", '""') == [3]
        assert s("SINCE", "5-Mar-2024") == [2, 3]
        assert s("BEFORE", "5-Mar-2024") == [1]
        assert s("ON", "5-Mar-2024") == [2]
        assert s("SENTSINCE", "6-Mar-2024") == [3]
        assert s("SENTBEFORE", "5-Mar-2024") == [1]
        assert s("SENTON", "4-Mar-2024") == [1]
        assert s("LARGER", "500") == [2] and s("SMALLER", "500") == [1, 3]
        assert s("SEEN") == [1] and s("UNSEEN") == [2, 3]
        assert s("ANSWERED") == [1] and s("UNANSWERED") == [2, 3]
        assert s("FLAGGED") == [2] and s("UNFLAGGED") == [1, 3]
        assert s("DELETED") == [3] and s("UNDELETED") == [1, 2]
        assert s("DRAFT") == [3] and s("UNDRAFT") == [1, 2]
        assert s("KEYWORD", "$Work") == [2] and s("UNKEYWORD", "$Work") == [1, 3]
        assert s("RECENT") == [1, 2, 3] and s("NEW") == [2, 3] and s("OLD") == []
        assert s("2:3") == [2, 3] and s("*") == [3] and s("UID", "1,3") == [1, 3]
        assert s("SEEN", "ANSWERED") == [1] and s("SEEN", "FLAGGED") == []
        assert s("OR", "SEEN", "FLAGGED") == [1, 2]
        assert s("NOT", "SEEN") == [2, 3]
        assert s("(OR SEEN FLAGGED)", "NOT", "FROM", "alice") == [2]
        assert s("OR", "(SEEN ANSWERED)", "(DRAFT DELETED)") == [1, 3]
        typ, data = m.uid("SEARCH", "FLAGGED")
        assert data == [b"2"]
        m.literal = "grüße".encode()  # sent as a synchronizing literal
        typ, data = m.search("UTF-8", "SUBJECT")
        assert typ == "OK" and data == [b"3"], data
        m.literal = "KÄSEBROT".encode()
        assert m.search("UTF-8", "BODY") == ("OK", [b"3"])
        typ, text = tagged(m, "SEARCH", "CHARSET", "KOI8-R", "ALL")
        assert typ == "NO" and b"BADCHARSET" in text
        with pytest.raises(imaplib.IMAP4.error, match="unknown SEARCH key"):
            m.search(None, "BOGUS")
        with pytest.raises(imaplib.IMAP4.error, match="bad date"):
            m.search(None, "SINCE", "yesterday")
        m.logout()

    await run(client)


# --- IDLE and several sessions --------------------------------------------------------------


async def test_idle_pushes_new_mail_and_done_ends_it(env: Env) -> None:
    await env.store.deliver("INBOX", SIMPLE)

    def client() -> None:
        m = env.client()
        m.select("INBOX")
        m.send(b"i1 IDLE\r\n")
        assert m.readline().startswith(b"+")
        env.call(env.store.deliver("INBOX", SIMPLE))
        assert m.readline() == b"* 2 EXISTS\r\n"
        assert m.readline() == b"* 2 RECENT\r\n"
        env.call(env.store.store_flags("INBOX", [1], "+", ["\\Deleted"]))
        assert m.readline() == b"* 1 FETCH (UID 1 FLAGS (\\Deleted \\Recent))\r\n"
        env.call(env.store.expunge("INBOX"))
        assert m.readline() == b"* 1 EXPUNGE\r\n"
        m.send(b"DONE\r\n")
        assert m.readline() == b"i1 OK IDLE terminated\r\n"
        assert m.fetch("1", "(UID)")[1] == [b"1 (UID 2)"]
        m.logout()

    await run(client)


async def test_other_sessions_get_expunge_and_exists_at_next_command(env: Env) -> None:
    for _ in range(3):
        await env.store.deliver("INBOX", SIMPLE)

    def client() -> None:
        a, b = env.client(), env.client()
        a.select("INBOX")
        b.select("INBOX")
        a.store("2", "+FLAGS.SILENT", "\\Deleted")
        a.expunge()
        a.append("INBOX", None, None, SIMPLE)
        # FETCH must not carry EXPUNGE (RFC 3501 7.4.1): B still sees three messages.
        assert b.fetch("3", "(UID)")[1] == [b"3 (UID 3)"]
        assert b.untagged_responses.get("EXPUNGE") is None
        assert b.noop()[0] == "OK"
        assert b.untagged_responses.pop("EXPUNGE") == [b"2"]
        assert b.fetch("1:*", "(UID)")[1][-3:] == [b"1 (UID 1)", b"2 (UID 3)", b"3 (UID 4)"]
        b.store("1", "+FLAGS.SILENT", "\\Seen")
        a.noop()
        assert a.untagged_responses.pop("FETCH") == [b"1 (UID 1 FLAGS (\\Recent \\Seen))"]
        a.logout()
        b.logout()

    await run(client)


async def test_check_enable_and_persistent_uids_across_restart(env: Env, tmp_path: Path) -> None:
    for _ in range(2):
        await env.store.deliver("INBOX", SIMPLE)
    validity = (await env.store.mailbox("INBOX")).uidvalidity

    def client() -> None:
        m = env.client()
        assert m.enable("CONDSTORE")[0] == "OK"
        m.select("INBOX")
        assert m.check()[0] == "OK"
        m.store("2", "+FLAGS.SILENT", "\\Deleted")
        m.expunge()
        m.logout()

    await run(client)
    await env.server.close()
    await env.store.close()
    store = await MailStore.open(env.store.path)
    try:
        assert (await store.mailbox("INBOX")).uidvalidity == validity
        assert await store.deliver("INBOX", SIMPLE) == 3
    finally:
        await store.close()


# --- hostile input --------------------------------------------------------------------------


def _raw(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    assert sock.recv(1000).startswith(b"* OK")
    return sock


def _read_until(sock: socket.socket, pattern: bytes) -> bytes:
    data = b""
    while not re.search(pattern, data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


async def test_garbage_giant_lines_and_literals_do_not_kill_the_server(env: Env) -> None:
    def client() -> None:
        s = _raw(env.port)
        s.sendall(b"\x00\xff garbage\r\n")
        assert _read_until(s, rb"\r\n").startswith(b"* BAD")
        s.sendall(b"a1 FROB\r\n")
        assert b"a1 BAD unknown command" in _read_until(s, rb"a1 .*\r\n")
        s.sendall(b"a2 LOGIN {999999999999}\r\n")
        assert b"a2 BAD literal of 999999999999 octets" in _read_until(s, rb"a2 .*\r\n")
        s.sendall(b"a3 NOOP\r\n")
        assert b"a3 OK" in _read_until(s, rb"a3 .*\r\n")
        s.sendall(b"a4 LOGIN " + b"x" * 70000 + b"\r\n")
        assert b"* BYE command line longer" in _read_until(s, rb"BYE .*\r\n")
        assert _read_until(s, rb"never") == b""  # closed by the server
        s.close()
        u = _raw(env.port)
        u.sendall(b"b1 LOGIN {6}\r\n")
        assert _read_until(u, rb"\r\n").startswith(b"+ ")
        u.sendall(b"nobody {2+}\r\npw\r\n")
        assert b"b1 NO [AUTHENTICATIONFAILED]" in _read_until(u, rb"b1 .*\r\n")
        u.sendall(b"b2 APPEND INBOX {10+}\r\nshort")  # unterminated literal, then hang up
        u.close()
        m = env.client()  # the server still serves others
        assert m.noop()[0] == "OK"
        m.logout()

    await run(client)


# --- CONDSTORE (RFC 7162) -------------------------------------------------------------------


async def test_condstore_modseq_changedsince_unchangedsince(env: Env) -> None:
    for _ in range(3):
        await env.store.deliver("INBOX", SIMPLE)

    def client() -> None:
        m, other = env.client(), env.client()
        assert "CONDSTORE" in m.capabilities
        assert m.enable("CONDSTORE")[0] == "OK"
        assert m.untagged_responses.pop("ENABLED") == [b"CONDSTORE"]
        other.select("INBOX")
        assert tagged(m, "SELECT", "INBOX", "(CONDSTORE)")[0] == "OK"
        m.state = "SELECTED"
        highest = int(m.untagged_responses["HIGHESTMODSEQ"][-1])
        _, data = m.fetch("1:*", "(MODSEQ)")
        modseqs = [int(re.search(rb"MODSEQ \((\d+)\)", d).group(1)) for d in data]  # type: ignore[union-attr]
        assert max(modseqs) == highest and len(set(modseqs)) == 3
        _, data = m.store("2", "+FLAGS", "(\\Flagged)")
        assert data == [b"2 (FLAGS (\\Flagged) MODSEQ (%d))" % (highest + 1)]  # other has \\Recent
        m._simple_command("FETCH", "1:*", "(FLAGS)", f"(CHANGEDSINCE {highest})")  # type: ignore[attr-defined]
        assert m.untagged_responses.pop("FETCH") == [
            b"2 (FLAGS (\\Flagged) MODSEQ (%d))" % (highest + 1)
        ]
        typ, text = tagged(
            m, "UID", "STORE", "1:3", f"(UNCHANGEDSINCE {highest})", "+FLAGS.SILENT", "(\\Seen)"
        )
        assert typ == "OK" and text.startswith(b"[MODIFIED 2]"), text
        assert m.untagged_responses.pop("FETCH") == [
            b"1 (UID 1 MODSEQ (%d))" % (highest + 2),
            b"3 (UID 3 MODSEQ (%d))" % (highest + 2),
        ]
        assert m.search(None, "MODSEQ", str(highest + 1)) == (
            "OK",
            [b"1 2 3 (MODSEQ %d)" % (highest + 2)],
        )
        assert m.search(None, "MODSEQ", '"/flags/\\\\seen"', "all", str(highest + 2)) == (
            "OK",
            [b"1 3 (MODSEQ %d)" % (highest + 2)],
        )
        assert m.status("INBOX", "(HIGHESTMODSEQ)")[1] == [
            b"INBOX (HIGHESTMODSEQ %d)" % (highest + 2)
        ]
        assert tagged(other, "FETCH", "2", "(MODSEQ)")[0] == "OK"  # turns CONDSTORE on
        other.untagged_responses.clear()
        m.store("1", "-FLAGS.SILENT", "(\\Seen)")
        other.noop()
        assert other.untagged_responses.pop("FETCH") == [
            b"1 (UID 1 FLAGS (\\Recent) MODSEQ (%d))" % (highest + 3)
        ]
        other.logout()
        m.logout()

    await run(client)


async def test_qresync_select_fetch_vanished_and_expunge(env: Env) -> None:
    store = env.store
    for _ in range(5):
        await store.deliver("INBOX", SIMPLE)
    validity = (await store.mailbox("INBOX")).uidvalidity

    def client() -> None:
        m = env.client()
        assert "QRESYNC" in m.capabilities
        with pytest.raises(imaplib.IMAP4.error, match="ENABLE QRESYNC"):
            m._simple_command("SELECT", "INBOX", f"(QRESYNC ({validity} 1))")  # type: ignore[attr-defined]
        assert m.enable("QRESYNC")[0] == "OK"
        assert m.untagged_responses.pop("ENABLED") == [b"QRESYNC"]
        m.select("INBOX")
        highest = int(m.untagged_responses["HIGHESTMODSEQ"][-1])
        env.call(store.store_flags("INBOX", [2, 4], "+", ["\\Deleted"]))
        env.call(store.expunge("INBOX"))
        env.call(store.store_flags("INBOX", [5], "+", ["\\Flagged"]))
        m.untagged_responses.clear()
        m.noop()
        assert m.untagged_responses.pop("VANISHED") == [b"2,4"]  # not "* n EXPUNGE"
        assert "EXPUNGE" not in m.untagged_responses
        flagged_modseq = highest + 3  # store, expunge, store
        assert m.untagged_responses.pop("FETCH") == [
            b"3 (UID 5 FLAGS (\\Flagged \\Recent) MODSEQ (%d))" % flagged_modseq
        ]
        # A client coming back with its cache: SELECT (QRESYNC (uidvalidity modseq known-uids))
        typ, _ = tagged(m, "SELECT", "INBOX", f"(QRESYNC ({validity} {highest} 1:5))")
        assert typ == "OK"
        assert "CLOSED" in m.untagged_responses
        assert m.untagged_responses.pop("VANISHED") == [b"(EARLIER) 2,4"]
        assert m.untagged_responses.pop("FETCH") == [
            b"3 (UID 5 FLAGS (\\Flagged) MODSEQ (%d))" % flagged_modseq
        ]
        m.untagged_responses.clear()
        assert tagged(m, "SELECT", "INBOX", f"(QRESYNC ({validity + 1} {highest}))")[0] == "OK"
        assert "VANISHED" not in m.untagged_responses  # other UIDVALIDITY: cache is void
        m.untagged_responses.clear()
        typ, _ = tagged(m, "UID", "FETCH", "1:*", "(FLAGS)", f"(CHANGEDSINCE {highest} VANISHED)")
        assert typ == "OK"
        assert m.untagged_responses.pop("VANISHED") == [b"(EARLIER) 2,4"]
        assert m.untagged_responses.pop("FETCH") == [
            b"3 (UID 5 FLAGS (\\Flagged) MODSEQ (%d))" % flagged_modseq
        ]
        m.state = "SELECTED"
        m.store("1", "+FLAGS.SILENT", "(\\Deleted)")
        m.untagged_responses.clear()
        assert m.expunge()[0] == "OK"
        assert m.untagged_responses.pop("VANISHED") == [b"1"]
        m.logout()

    await run(client)


# --- entry points and shutdown --------------------------------------------------------------


async def test_start_imap_server_listens_on_loopback_by_default(tmp_path: Path) -> None:
    store = await MailStore.open(tmp_path / "entry.db")

    async def authenticator(user: str, password: str) -> bool:
        return password == PASSWORD

    server = await start_imap_server(store, authenticator, port=0, username=USER)
    try:
        host, port = server.sockets[0].getsockname()[:2]
        assert host == "127.0.0.1"

        def client() -> None:
            m = imaplib.IMAP4("127.0.0.1", port, timeout=20)
            assert m.login(USER, PASSWORD)[0] == "OK"
            assert m.select("Sent")[0] == "OK"
            m.logout()

        await run(client)
    finally:
        server.close()
        await server.wait_closed()
        await store.close()


async def test_close_ends_connected_and_idling_sessions(env: Env) -> None:
    def connect() -> tuple[imaplib.IMAP4, imaplib.IMAP4]:
        idle, plain = env.client(), env.client()
        idle.select("INBOX")
        idle.send(b"i IDLE\r\n")
        assert idle.readline().startswith(b"+")
        return idle, plain

    idle, plain = await asyncio.to_thread(connect)
    await asyncio.wait_for(env.server.close(), 10)

    def gone() -> None:
        assert idle.readline() == b""  # EOF: the server closed the connection
        with pytest.raises((imaplib.IMAP4.abort, OSError)):
            plain.noop()
        idle.shutdown()
        plain.shutdown()

    await run(gone)


async def test_connection_limit(tmp_path: Path) -> None:
    store = await MailStore.open(tmp_path / "limit.db")

    async def authenticator(user: str, password: str) -> bool:
        return True

    server = ImapServer(store, authenticator, username=USER, max_connections=2)
    await server.start("127.0.0.1", 0)
    try:

        def client() -> None:
            first, second = _raw(server.port), _raw(server.port)
            third = socket.create_connection(("127.0.0.1", server.port), timeout=20)
            assert _read_until(third, rb"\r\n") == (
                b"* BYE too many connections, close some mail clients\r\n"
            )
            third.close()
            first.sendall(b"a LOGOUT\r\n")
            assert b"a OK" in _read_until(first, rb"a OK.*\r\n")
            first.close()
            second.close()

        await run(client)
    finally:
        await server.close()
        await store.close()
