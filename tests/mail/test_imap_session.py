"""The session state machine without sockets: bytes in, exact bytes out (real store)."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps.mail.imap import CAPABILITIES, ImapSession
from apps.mail.store import MailStore

USER = "12" * 32 + "@mesh"
RAW = b"From: Ann <ann@a.mesh>\r\nSubject: hi\r\n\r\nhello\r\n"


class Wire:
    def __init__(self) -> None:
        self.sent = bytearray()

    async def write(self, data: bytes) -> None:
        self.sent += data

    def take(self) -> bytes:
        data, self.sent = bytes(self.sent), bytearray()
        return data


async def _auth(user: str, password: str) -> bool:
    return password == "pw"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[MailStore]:
    s = await MailStore.open(tmp_path / "mail.db")
    try:
        yield s
    finally:
        await s.close()


async def test_login_select_fetch_byte_exact(store: MailStore) -> None:
    await store.deliver("INBOX", RAW, flags=["\\Seen"])
    validity = (await store.mailbox("INBOX")).uidvalidity
    wire = Wire()
    session = ImapSession(store, _auth, USER, wire.write)
    assert (
        session.greeting()
        == f"* OK [CAPABILITY {CAPABILITIES}] meshsuite IMAP4rev1 ready\r\n".encode()
    )
    await session.receive_data(f"a1 LOGIN {USER} pw\r\n".encode())
    assert wire.take() == f"a1 OK [CAPABILITY {CAPABILITIES}] LOGIN completed\r\n".encode()
    await session.receive_data(b"a2 SELECT inbox\r\n")
    assert wire.take() == (
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)]"
        b" flags permitted\r\n"
        b"* 1 EXISTS\r\n* 1 RECENT\r\n"
        b"* OK [UIDVALIDITY %d] UIDs valid\r\n"
        b"* OK [UIDNEXT 2] predicted next UID\r\n"
        b"* OK [HIGHESTMODSEQ 2] highest\r\n"
        b"a2 OK [READ-WRITE] SELECT completed\r\n" % validity
    )
    await session.receive_data(b"a3 UID FETCH 1 (FLAGS BODY.PEEK[TEXT] RFC822.SIZE)\r\n")
    assert wire.take() == (
        b"* 1 FETCH (UID 1 FLAGS (\\Recent \\Seen) BODY[TEXT] {7}\r\nhello\r\n"
        b" RFC822.SIZE %d)\r\na3 OK FETCH completed\r\n" % len(RAW)
    )
    # Two commands in one segment, the second split across reads.
    await session.receive_data(b"a4 NOOP\r\na5 LOG")
    assert wire.take() == b"a4 OK NOOP completed\r\n"
    await session.receive_data(b"OUT\r\n")
    assert wire.take() == b"* BYE logging out\r\na5 OK LOGOUT completed\r\n"
    assert session.finished
    session.detach()


async def test_idle_and_continuations_are_exact(store: MailStore) -> None:
    wire = Wire()
    session = ImapSession(store, _auth, USER, wire.write)
    await session.receive_data(b"t1 AUTHENTICATE PLAIN\r\n")
    assert wire.take() == b"+ \r\n"
    await session.receive_data(base64.b64encode(f"\0{USER}\0pw".encode()) + b"\r\n")
    assert wire.take().startswith(b"t1 OK [CAPABILITY ")
    await session.receive_data(b"t2 APPEND INBOX {%d}\r\n" % len(RAW))
    assert wire.take() == b"+ Ready for literal data\r\n"
    await session.receive_data(RAW + b"\r\n")
    validity = (await store.mailbox("INBOX")).uidvalidity
    assert wire.take() == b"t2 OK [APPENDUID %d 1] APPEND completed\r\n" % validity
    await session.receive_data(b"t3 EXAMINE INBOX\r\nt4 IDLE\r\n")
    assert wire.take().endswith(b"t3 OK [READ-ONLY] EXAMINE completed\r\n+ idling\r\n")
    await store.deliver("INBOX", RAW)
    assert session.wakeup.is_set()
    await session.on_wakeup()
    assert wire.take() == b"* 2 EXISTS\r\n* 0 RECENT\r\n"
    await session.receive_data(b"DONE\r\n")
    assert wire.take() == b"t4 OK IDLE terminated\r\n"
    session.detach()


# A tag is any ASTRING-CHAR but "+" (RFC 3501 section 9).
_LINE = re.compile(rb'^(\* |\+ |[^\x00-\x20(){%*"\\+\x7f-\xff]+ (OK|NO|BAD) )')


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=200),
            st.sampled_from(
                [
                    b"x LOGIN " + USER.encode() + b" pw\r\n",
                    b"x SELECT INBOX\r\n",
                    b"x FETCH 1:* (FLAGS BODY[])\r\n",
                    b"x APPEND INBOX {5+}\r\n",
                    b"x SEARCH OR (\r\n",
                    b"x UID STORE * +FLAGS (\\Deleted)\r\n",
                    b"{99999999999}\r\n",
                    b"\r\n",
                ]
            ),
        ),
        max_size=10,
    )
)
async def test_fuzzed_input_only_yields_wellformed_responses(
    store: MailStore, chunks: list[bytes]
) -> None:
    wire = Wire()
    session = ImapSession(store, _auth, USER, wire.write)
    try:
        for chunk in chunks:
            await session.receive_data(chunk)
            if session.finished:
                break
    finally:
        session.detach()
    out = wire.take()
    # Strip literals, then every line must be untagged, a continuation or a tagged status.
    out = re.sub(rb"\{\d+\}\r\n", b"{}", out)
    for line in out.split(b"\r\n"):
        if line and not line.startswith((b"hello", b"From:", b"Subject:", b")")):
            assert _LINE.match(line), line


def test_public_surface() -> None:
    import inspect

    import apps.mail.imap as imap
    import apps.mail.store as store_module

    assert sorted(imap.__all__) == sorted(
        [
            "CAPABILITIES",
            "DEFAULT_PORT",
            "Authenticator",
            "Command",
            "CommandParser",
            "ImapServer",
            "ImapSession",
            "NeedContinuation",
            "ProtocolError",
            "RawLine",
            "start_imap_server",
        ]
    )
    assert all(hasattr(imap, name) for name in imap.__all__)
    assert all(hasattr(store_module, name) for name in store_module.__all__)
    params = inspect.signature(imap.start_imap_server).parameters
    assert list(params) == ["store", "authenticator", "host", "port", "username"]
    assert params["host"].default == "127.0.0.1" and params["port"].default == 1143
    assert params["username"].kind is inspect.Parameter.KEYWORD_ONLY
    for method in ("deliver", "count", "fetch_raw", "list_uids", "get_flags", "close"):
        assert inspect.iscoroutinefunction(getattr(MailStore, method)), method
    assert not inspect.iscoroutinefunction(MailStore.subscribe_new_mail)


async def test_a_failing_collaborator_is_serverbug_not_a_dead_session(store: MailStore) -> None:
    async def broken(user: str, password: str) -> bool:
        raise RuntimeError("password database unavailable")

    wire = Wire()
    session = ImapSession(store, broken, USER, wire.write)
    await session.receive_data(f"a LOGIN {USER} pw\r\nb NOOP\r\n".encode())
    assert wire.take() == (
        b"a NO [SERVERBUG] internal server error, see the node log\r\nb OK NOOP completed\r\n"
    )
    session.detach()
