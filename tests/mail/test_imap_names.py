"""Mailbox names: modified UTF-7 (RFC 3501 5.1.3), UTF8=ACCEPT (RFC 6855), invalid names
refused with NO; RENAME of implied parents and into oneself; LSUB's \\Noselect parents."""

from __future__ import annotations

import base64
import socket
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apps.mail.imap.names import decode_mailbox, decode_mutf7, encode_mutf7
from apps.mail.store import MailStore
from tests.mail.test_imap_commands import USER, Env, _raw, _read_until, env, run, tagged

__all__ = ["env"]  # the fixture, imported for these tests

NAMES = {
    "cyrillic": "Входящие/Архив",
    "cjk": "台北/日本語",
    "emoji": "Ideas 💡🚀",
    "arabic": "البريد الوارد",
    "mixed": "R&D/Café \u2013 ñ",
}


def reference_mutf7(name: str) -> str:
    """An independent encoder: Python's UTF-7 codec, adapted as RFC 3501 5.1.3 says."""
    out, run_chars = [], ""
    for ch in name + "\x00end":
        if "\x20" <= ch <= "\x7e" or ch == "\x00":
            if run_chars:
                b64 = base64.b64encode(run_chars.encode("utf-16-be")).decode().rstrip("=")
                out.append("&" + b64.replace("/", ",") + "-")
                run_chars = ""
            if ch == "\x00":
                break
            out.append("&-" if ch == "&" else ch)
        else:
            run_chars += ch
    return "".join(out)


def test_rfc3501_example_decodes_and_encodes() -> None:
    assert decode_mutf7("~peter/mail/&U,BTFw-/&ZeVnLIqe-") == "~peter/mail/台北/日本語"
    assert encode_mutf7("~peter/mail/台北/日本語") == "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
    assert decode_mutf7("R&-D") == "R&D"


@pytest.mark.parametrize("script", sorted(NAMES))
def test_names_in_several_scripts_round_trip(script: str) -> None:
    name = NAMES[script]
    wire = encode_mutf7(name)
    assert wire == reference_mutf7(name)
    assert wire.isascii() and all(" " <= c <= "~" for c in wire)
    assert decode_mutf7(wire) == name


@pytest.mark.parametrize(
    ("wire", "why"),
    [
        ("bad&", "never ends"),
        ("bad&Jjo", "never ends"),
        ("&AGE-", "printable US-ASCII"),  # 'a' smuggled in BASE64
        ("&Jjo!-", "outside modified BASE64"),
        ("&2D0-", "surrogate"),  # a lone high surrogate
        ("&AAA-", "printable|control"),  # NUL
        ("&BB8-&BEA-", "canonical"),  # two shifts where one would do
        ("caf\xe9", "raw 8-bit"),
        ("a\rb", "not allowed raw"),
    ],
)
def test_invalid_modified_utf7_is_refused(wire: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        decode_mailbox(wire, utf8=False)


def test_utf8_mode_takes_utf8_and_refuses_bad_bytes() -> None:
    assert decode_mailbox("Входящие".encode(), utf8=True) == "Входящие"
    assert decode_mailbox(b"R&D", utf8=True) == "R&D"  # '&' is a plain character
    with pytest.raises(ValueError, match="not valid UTF-8"):
        decode_mailbox(b"\xff\xfe", utf8=True)
    with pytest.raises(ValueError, match="control character"):
        decode_mailbox(b"a\x00b", utf8=True)
    with pytest.raises(ValueError, match="wildcards"):
        decode_mailbox(b"a*b", utf8=True, creating=True)
    with pytest.raises(ValueError, match="empty level"):
        decode_mailbox(b"a//b", utf8=True, creating=True)


@pytest.mark.parametrize("name", [b"INBOX/../x", b"..", b"a/.", b"./a", b"a/../b/"])
def test_dot_and_dot_dot_levels_are_refused_when_creating(name: bytes) -> None:
    with pytest.raises(ValueError, match=r"'\.\.' level"):
        decode_mailbox(name, utf8=False, creating=True)
    assert decode_mailbox(b"a.b/..c/d..", utf8=False, creating=True) == "a.b/..c/d.."


def _raw_login(port: int) -> socket.socket:
    sock = _raw(port)
    sock.sendall(f'l LOGIN {USER} "correct horse"\r\n'.encode())
    assert b"l OK" in _read_until(sock, rb"l (OK|NO|BAD)[^\r]*\r\n")
    return sock


def _answer(sock: socket.socket, tag: bytes, command: bytes) -> bytes:
    sock.sendall(tag + b" " + command)
    return _read_until(sock, rb"(^|\n)" + tag + rb" (OK|NO|BAD)[^\r]*\r\n")


async def test_invalid_names_get_a_clear_no_over_raw_commands(env: Env) -> None:
    def client() -> None:
        sock = _raw_login(env.port)
        cases = [
            b'CREATE "bad&"\r\n',
            b'CREATE "bad&Jjo"\r\n',
            b"CREATE {5+}\r\nab\x00cd\r\n",
            b"CREATE {5+}\r\nab\rcd\r\n",
            b'CREATE "caf\xc3\xa9"\r\n',
            b"CREATE caf\xe9\r\n",
            b'CREATE "&AGE-"\r\n',
            b'RENAME INBOX "bad&"\r\n',
            b'SELECT "bad&Jjo"\r\n',
            b'APPEND "bad&" {3+}\r\nx\r\n\r\n',
        ]
        for i, case in enumerate(cases):
            tag = b"t%d" % i
            reply = _answer(sock, tag, case)
            assert tag + b" NO [CANNOT] invalid mailbox name: " in reply, (case, reply)
        reply = _answer(sock, b"l1", b'LIST "" *\r\n')
        assert b"bad" not in reply and b"caf" not in reply and b"ab" not in reply
        sock.close()

    await run(client)


async def test_names_in_several_scripts_through_imaplib(env: Env) -> None:
    def client() -> None:
        m = env.client()
        for name in NAMES.values():
            wire = reference_mutf7(name)
            assert m.create(f'"{wire}"')[0] == "OK", name
            assert m.select(f'"{wire}"')[0] == "OK"
            assert m.append(f'"{wire}"', None, None, b"Subject: hi\r\n\r\nbody\r\n")[0] == "OK"
            typ, data = m.status(f'"{wire}"', "(MESSAGES)")
            assert typ == "OK" and data[0].replace(b'"', b"") == f"{wire} (MESSAGES 1)".encode()
        typ, listed = m.list()
        assert typ == "OK"
        text = b"\n".join(x for x in listed if isinstance(x, bytes)).decode("ascii")
        for name in NAMES.values():
            for level in range(1, name.count("/") + 2):
                assert reference_mutf7("/".join(name.split("/")[:level])) in text
        # the store holds the names themselves, not their wire spelling
        stored = {b.name for b in env.call(env.store.list_mailboxes())}
        assert set(NAMES.values()) <= stored
        m.logout()

    await run(client)


async def test_utf8_accept_names_travel_as_utf8_and_legacy_clients_see_mutf7(env: Env) -> None:
    def client() -> None:
        m = env.client()
        assert "UTF8=ACCEPT" in m.capabilities
        assert m.enable("UTF8=ACCEPT")[0] == "OK"
        assert m.create('"Входящие/R&D"')[0] == "OK"
        typ, listed = m.list('""', '"Входящие/*"')
        assert typ == "OK" and listed == ['(\\HasNoChildren) "/" "Входящие/R&D"'.encode()]
        m.logout()
        legacy = env.client()
        wire = reference_mutf7("Входящие/R&D")
        assert wire == "&BBIERQQ+BDQETwRJBDgENQ-/R&-D"
        typ, listed = legacy.list('""', f'"{reference_mutf7("Входящие")}/*"')
        assert listed == [f'(\\HasNoChildren) "/" {wire}'.encode()]
        assert legacy.select(wire)[0] == "OK"
        typ, text = tagged(legacy, "CREATE", '"Входящие"'.encode())
        assert typ == "NO" and b"[CANNOT]" in text and b"raw 8-bit" in text
        legacy.logout()

    await run(client)


async def test_rename_of_an_implied_parent_moves_its_children(env: Env) -> None:
    def client() -> None:
        m = env.client()
        assert m.create("a/b/c")[0] == "OK"
        assert m.create("a/d")[0] == "OK"
        typ, listed = m.list('""', "a")
        assert listed == [b'(\\Noselect \\HasChildren) "/" a']
        assert m.rename("a", "z")[0] == "OK"
        typ, listed = m.list('""', "*")
        names = {line.rsplit(b" ", 1)[1] for line in listed if isinstance(line, bytes)}
        assert {b"z/b/c", b"z/d"} <= names and not any(n.startswith(b"a/") for n in names)
        typ, text = tagged(m, "RENAME", "nothing", "elsewhere")
        assert typ == "NO" and b"NONEXISTENT" in text
        m.logout()

    await run(client)


async def test_rename_into_its_own_subtree_is_refused(env: Env) -> None:
    def client() -> None:
        m = env.client()
        assert m.create("X")[0] == "OK"
        typ, text = tagged(m, "RENAME", "X", "X/child")
        assert typ == "NO" and b"into its own subtree" in text
        typ, text = tagged(m, "RENAME", "X", "X")
        assert typ == "NO"
        typ, listed = m.list('""', "X*")
        assert listed == [b'(\\HasNoChildren) "/" X']
        m.logout()

    await run(client)


async def test_lsub_percent_shows_noselect_parents_of_subscribed_children(env: Env) -> None:
    def client() -> None:
        m = env.client()
        assert m.create("p/q/r")[0] == "OK"
        assert m.create("s")[0] == "OK"
        assert m.subscribe("p/q/r")[0] == "OK"
        assert m.subscribe("s")[0] == "OK"
        typ, listed = m.lsub('""', "%")
        assert typ == "OK"
        assert b'(\\Noselect) "/" p' in listed
        assert any(line.endswith(b'"/" s') and b"Noselect" not in line for line in listed)
        typ, listed = m.lsub('""', "p/%")
        assert listed == [b'(\\Noselect) "/" p/q']
        typ, listed = m.lsub('""', "*")  # '*' reaches the child itself: no parents
        assert b'(\\Noselect) "/" p' not in listed
        assert any(line.endswith(b"p/q/r") for line in listed)
        m.logout()

    await run(client)


async def test_utf8_append_data_item_after_enable(env: Env) -> None:
    """RFC 6855 section 4: APPEND ... UTF8 (~{n}...) once UTF8=ACCEPT is enabled."""
    message = "From: x@y\r\nSubject: Привет 👋\r\n\r\n\u0442\u0435\u043b\u043e\r\n".encode()

    def client() -> None:
        sock = _raw_login(env.port)
        command = b"INBOX UTF8 (~{%d+}\r\n" % len(message) + message + b")\r\n"
        reply = _answer(sock, b"u0", b"APPEND " + command)
        assert b"u0 BAD" in reply and b"ENABLE UTF8=ACCEPT first" in reply
        assert b"u1 OK" in _answer(sock, b"u1", b"ENABLE UTF8=ACCEPT\r\n")
        reply = _answer(sock, b"u2", b"APPEND " + command)
        assert b"u2 OK [APPENDUID " in reply, reply
        sock.close()

    await run(client)
    (uid,) = await env.store.list_uids("INBOX")
    assert await env.store.fetch_raw("INBOX", uid) == message


async def test_a_version_1_store_gets_its_modified_utf7_names_decoded(tmp_path: Path) -> None:
    """Before version 2 the store kept names as sent (modified UTF-7): opening converts."""
    path = tmp_path / "old.db"
    store = await MailStore.open(path)
    await store.create_mailbox("placeholder")
    await store.close()
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE schema_version SET version = 1")
        db.execute("UPDATE mailboxes SET name = ? WHERE name = 'placeholder'", ("&U,BTFw-/x",))
        db.execute("INSERT INTO mailboxes (name, uidvalidity) VALUES ('bad&Jjo', 7), ('R&-D', 8)")
    db.close()
    store = await MailStore.open(path)
    try:
        names = {b.name for b in await store.list_mailboxes()}
    finally:
        await store.close()
    assert {"台北/x", "bad&Jjo", "R&D"} <= names and "&U,BTFw-/x" not in names


@given(st.text(max_size=40))
def test_any_text_round_trips_through_modified_utf7(name: str) -> None:
    wire = encode_mutf7(name)
    assert all(" " <= c <= "~" for c in wire)
    assert decode_mutf7(wire) == name
    assert wire == reference_mutf7(name) or "\x00" in name  # the reference stops at NUL


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20))
def test_ascii_that_is_not_canonical_is_refused_never_misread(text: str) -> None:
    try:
        name = decode_mutf7(text)
    except ValueError:
        return
    assert encode_mutf7(name) == text  # whatever is accepted has exactly this spelling
