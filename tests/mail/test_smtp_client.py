"""The sans-IO SMTP client: byte-exact dialogues, reply parsing, bounds, outcomes."""

from __future__ import annotations

import asyncio

import pytest
from aiosmtpd.smtp import SMTP

from apps.mail.smtp_client import (
    MAX_REPLY_LINE,
    ClientSession,
    ClientTransaction,
    Envelope,
    RemoteProtocolError,
    ReplyParser,
    State,
    dot_stuff,
    run_transaction,
)

CONTENT = b"From: a@mesh\r\nSubject: hi\r\n\r\n.leading dot\r\nbody\r\n"


def _txn(content: bytes = CONTENT, rcpts: tuple[str, ...] = ("b@mesh",)) -> ClientTransaction:
    return ClientTransaction("[IPv6:200::1]", "a@mesh", list(rcpts), content)


def test_happy_path_byte_exact() -> None:
    txn = _txn()
    assert txn.data_to_send() == b""
    txn.receive_data(b"220 node ESMTP\r\n")
    assert txn.data_to_send() == b"EHLO [IPv6:200::1]\r\n"
    txn.receive_data(b"250-node\r\n250-SIZE 1000\r\n250 8BITMIME\r\n")
    assert txn.data_to_send() == b"MAIL FROM:<a@mesh> SIZE=%d\r\n" % len(CONTENT)
    txn.receive_data(b"250 ok\r\n")
    assert txn.data_to_send() == b"RCPT TO:<b@mesh>\r\n"
    txn.receive_data(b"250 ok\r\n")
    assert txn.data_to_send() == b"DATA\r\n"
    txn.receive_data(b"354 go\r\n")
    assert txn.data_to_send() == (
        b"From: a@mesh\r\nSubject: hi\r\n\r\n..leading dot\r\nbody\r\n.\r\n"
    )
    txn.receive_data(b"250 2.0.0 stored\r\n")
    assert txn.data_to_send() == b"QUIT\r\n"
    txn.receive_data(b"221 bye\r\n")
    assert txn.state is State.DONE
    assert txn.outcomes[0].delivered == ["b@mesh"]
    assert not txn.outcomes[0].temporary and not txn.outcomes[0].permanent


def test_replies_split_across_reads() -> None:
    txn = _txn()
    for byte in b"220 x\r\n250-x\r\n250 SIZE 0\r\n":
        txn.receive_data(bytes([byte]))
    assert txn.data_to_send().endswith(b"MAIL FROM:<a@mesh> SIZE=%d\r\n" % len(CONTENT))


def test_oversize_refused_before_mail_from() -> None:
    txn = _txn(b"x" * 2000)
    txn.receive_data(b"220 x\r\n")
    txn.data_to_send()
    txn.receive_data(b"250-x\r\n250 SIZE 1000\r\n")
    assert txn.data_to_send() == b"QUIT\r\n"
    assert "552" in txn.outcomes[0].permanent["b@mesh"]


@pytest.mark.parametrize(
    ("rcpt_reply", "bucket"),
    [(b"550 5.7.1 relaying denied", "permanent"), (b"450 busy", "temporary")],
)
def test_rcpt_refusal(rcpt_reply: bytes, bucket: str) -> None:
    txn = _txn()
    txn.receive_data(b"220 x\r\n250 x\r\n250 ok\r\n" + rcpt_reply + b"\r\n")
    assert txn.data_to_send().endswith(b"QUIT\r\n")
    assert "RCPT TO" in getattr(txn.outcomes[0], bucket)["b@mesh"]
    assert not txn.outcomes[0].delivered


def test_partial_recipients() -> None:
    txn = _txn(rcpts=("b@mesh", "c@mesh"))
    txn.receive_data(b"220 x\r\n250 x\r\n250 ok\r\n250 ok\r\n550 no\r\n354 go\r\n250 ok\r\n")
    assert txn.outcomes[0].delivered == ["b@mesh"]
    assert "550" in txn.outcomes[0].permanent["c@mesh"]


@pytest.mark.parametrize(
    ("final", "bucket"), [(b"451 later", "temporary"), (b"554 no", "permanent")]
)
def test_end_of_data_refusal(final: bytes, bucket: str) -> None:
    txn = _txn()
    txn.receive_data(b"220 x\r\n250 x\r\n250 ok\r\n250 ok\r\n354 go\r\n" + final + b"\r\n")
    assert "end of DATA" in getattr(txn.outcomes[0], bucket)["b@mesh"]


def test_ehlo_refused_falls_back_to_helo() -> None:
    txn = _txn()
    txn.receive_data(b"220 x\r\n")
    txn.data_to_send()
    txn.receive_data(b"502 no EHLO\r\n")
    assert txn.data_to_send() == b"HELO [IPv6:200::1]\r\n"
    txn.receive_data(b"250 hello\r\n")
    assert txn.data_to_send() == b"MAIL FROM:<a@mesh>\r\n"  # no SIZE without EHLO


def test_greeting_554_is_permanent_421_temporary() -> None:
    txn = _txn()
    txn.receive_data(b"554 go away\r\n")
    assert "554" in txn.outcomes[0].permanent["b@mesh"]
    txn = _txn()
    txn.receive_data(b"421 busy\r\n")
    assert "421" in txn.outcomes[0].temporary["b@mesh"]


@pytest.mark.parametrize(
    "garbage",
    [
        b"HTTP/1.1 200 OK\r\n",
        b"999 what\r\n",
        b"250-x\r\n221 mixed\r\n",
        b"x" * (MAX_REPLY_LINE + 5),
    ],
)
def test_garbage_is_a_temporary_failure(garbage: bytes) -> None:
    txn = _txn()
    txn.receive_data(b"220 x\r\n")
    txn.data_to_send()
    txn.receive_data(garbage)
    assert txn.state is State.ERROR
    assert "protocol error" in txn.outcomes[0].temporary["b@mesh"]


def test_too_many_reply_lines() -> None:
    parser = ReplyParser()
    with pytest.raises(RemoteProtocolError):
        parser.feed(b"250-x\r\n" * 200)


def test_eof_mid_transaction_is_temporary_but_not_after_data() -> None:
    txn = _txn()
    txn.receive_data(b"220 x\r\n250 x\r\n")
    txn.receive_data(b"")
    assert txn.state is State.ERROR and "closed" in txn.outcomes[0].temporary["b@mesh"]
    txn = _txn()
    txn.receive_data(b"220 x\r\n250 x\r\n250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n")
    txn.receive_data(b"")  # no 221: the mail was taken already
    assert txn.state is State.DONE and txn.outcomes[0].delivered == ["b@mesh"]


def test_dot_stuff() -> None:
    assert dot_stuff(b"a\nb") == b"a\r\nb\r\n.\r\n"
    assert dot_stuff(b".\r\n..x\r\n") == b"..\r\n...x\r\n.\r\n"
    assert dot_stuff(b"") == b".\r\n"


class _Sink:
    def __init__(self) -> None:
        self.content: bytes | None = None

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        self.content = envelope.original_content  # type: ignore[attr-defined]
        return "250 2.0.0 taken"


async def test_against_real_aiosmtpd() -> None:
    """Dot-stuffing and the whole dialogue round-trip through aiosmtpd unchanged."""
    loop = asyncio.get_running_loop()
    sink = _Sink()
    server = await loop.create_server(
        lambda: SMTP(sink, hostname="sink", loop=loop), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    content = b"Subject: dots\r\n\r\n.\r\n..\r\n.x\r\nlast line without newline"
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        outcome = await run_transaction(_txn(content), reader, writer, timeout=10)
    finally:
        server.close()
        await server.wait_closed()
    assert outcome.delivered == ["b@mesh"], outcome
    assert sink.content == content + b"\r\n"


async def test_silent_server_times_out() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        outcome = await run_transaction(_txn(), reader, writer, timeout=0.2)
    finally:
        server.close()
        await server.wait_closed()
    assert "no reply within" in outcome.temporary["b@mesh"]


def test_session_with_several_messages_byte_exact() -> None:
    """Two messages on one connection: the first is refused at RCPT (RSET follows),
    the second goes through; then a third is delivered after a completed one (no RSET)."""
    mails = [
        Envelope("a@mesh", ("b@mesh",), b"Subject: 1\r\n\r\none\r\n"),
        Envelope("a@mesh", ("b@mesh",), b"Subject: 2\r\n\r\ntwo\r\n"),
        Envelope("a@mesh", ("b@mesh",), b"Subject: 3\r\n\r\nthree\r\n"),
    ]
    s = ClientSession("h", mails)
    s.receive_data(b"220 x\r\n250 x\r\n")
    assert s.data_to_send() == b"EHLO h\r\nMAIL FROM:<a@mesh>\r\n"
    s.receive_data(b"250 ok\r\n")
    assert s.data_to_send() == b"RCPT TO:<b@mesh>\r\n"
    s.receive_data(b"550 no\r\n")
    assert s.data_to_send() == b"RSET\r\n"
    s.receive_data(b"250 reset\r\n")
    assert s.data_to_send() == b"MAIL FROM:<a@mesh>\r\n"
    s.receive_data(b"250 ok\r\n250 ok\r\n354 go\r\n")
    assert s.data_to_send() == b"RCPT TO:<b@mesh>\r\nDATA\r\nSubject: 2\r\n\r\ntwo\r\n.\r\n"
    s.receive_data(b"250 stored\r\n")
    assert s.data_to_send() == b"MAIL FROM:<a@mesh>\r\n"
    s.receive_data(b"250 ok\r\n250 ok\r\n354 go\r\n250 stored\r\n")
    assert s.data_to_send().endswith(b".\r\nQUIT\r\n")
    assert [o.delivered for o in s.outcomes] == [[], ["b@mesh"], ["b@mesh"]]
    assert "550" in s.outcomes[0].permanent["b@mesh"]


def test_session_421_mid_way_defers_the_rest() -> None:
    mails = [Envelope("a@mesh", ("b@mesh",), b"x\r\n") for _ in range(3)]
    s = ClientSession("h", mails)
    s.receive_data(b"220 x\r\n250 x\r\n250 ok\r\n250 ok\r\n354 go\r\n250 stored\r\n")
    s.receive_data(b"421 4.3.2 shutting down\r\n")
    assert s.state is State.ERROR
    assert s.outcomes[0].delivered == ["b@mesh"]
    assert all("421" in o.temporary["b@mesh"] for o in s.outcomes[1:])


def test_batches_group_by_recipient() -> None:
    from apps.mail.queue import Delivery
    from apps.mail.runner import MAX_BATCH, _batches

    def d(i: int, rcpt: str) -> Delivery:
        return Delivery(i, i, "t", "a@mesh", f"<{i}>", rcpt, 0, 0.0, 0.0, None)

    due = [d(i, "b@mesh") for i in range(MAX_BATCH + 5)] + [d(100, "c@mesh")]
    batches = _batches(due, limit=10)
    assert [len(b) for b in batches] == [MAX_BATCH, 5, 1]  # in order of the oldest mail
    assert {x.recipient for x in batches[2]} == {"c@mesh"}
    assert len(_batches(due, limit=2)) == 2
