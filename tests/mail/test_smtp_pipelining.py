"""PIPELINING (RFC 2920): byte-exact client flights, refusals inside a flight, and whole
sessions against a real aiosmtpd server that offers it the way the mail service does."""

from __future__ import annotations

import asyncio
from typing import Any

from apps.mail.smtp_client import ClientSession, Envelope, State, run_session
from apps.mail.smtp_server import MeshSMTP, ehlo_with_pipelining

EHLO_PIPELINING = b"250-node\r\n250-PIPELINING\r\n250 8BITMIME\r\n"


def _session(*rcpts: tuple[str, ...]) -> ClientSession:
    mails = [Envelope("a@mesh", r, b"Subject: %d\r\n\r\nx\r\n" % i) for i, r in enumerate(rcpts)]
    s = ClientSession("h", mails)
    s.receive_data(b"220 hi\r\n")
    assert s.data_to_send() == b"EHLO h\r\n"
    return s


def test_one_flight_per_message_byte_exact() -> None:
    s = _session(("b@mesh", "c@mesh"), ("b@mesh",))
    s.receive_data(EHLO_PIPELINING)
    assert s.data_to_send() == (
        b"MAIL FROM:<a@mesh>\r\nRCPT TO:<b@mesh>\r\nRCPT TO:<c@mesh>\r\nDATA\r\n"
    )
    s.receive_data(b"250 ok\r\n250 ok\r\n550 no such user\r\n354 go\r\n")
    # The body, and the next message's commands right behind it.
    assert s.data_to_send() == (
        b"Subject: 0\r\n\r\nx\r\n.\r\nMAIL FROM:<a@mesh>\r\nRCPT TO:<b@mesh>\r\nDATA\r\n"
    )
    s.receive_data(b"250 stored\r\n")
    assert s.data_to_send() == b""  # nothing twice
    s.receive_data(b"250 ok\r\n250 ok\r\n354 go\r\n")
    assert s.data_to_send() == b"Subject: 1\r\n\r\nx\r\n.\r\n"
    s.receive_data(b"250 stored\r\n")
    assert s.data_to_send() == b"QUIT\r\n"
    s.receive_data(b"221 bye\r\n")
    assert s.state is State.DONE
    assert s.outcomes[0].delivered == ["b@mesh"]
    assert s.outcomes[0].permanent["c@mesh"].startswith("RCPT TO: 550")
    assert s.outcomes[1].delivered == ["b@mesh"]


def test_a_refused_body_does_not_stop_the_message_sent_behind_it() -> None:
    s = _session(("b@mesh",), ("b@mesh",), ("b@mesh",))
    s.receive_data(EHLO_PIPELINING)
    s.data_to_send()
    s.receive_data(b"250 ok\r\n250 ok\r\n354 go\r\n")
    assert s.data_to_send().endswith(b".\r\nMAIL FROM:<a@mesh>\r\nRCPT TO:<b@mesh>\r\nDATA\r\n")
    s.receive_data(b"451 4.3.0 try later\r\n250 ok\r\n250 ok\r\n354 go\r\n")
    assert s.data_to_send() == (
        b"Subject: 1\r\n\r\nx\r\n.\r\nMAIL FROM:<a@mesh>\r\nRCPT TO:<b@mesh>\r\nDATA\r\n"
    )
    # The server goes away after the second body: the third is undecided, to retry.
    s.receive_data(b"250 stored\r\n421 closing\r\n")
    assert s.state is State.ERROR
    assert s.outcomes[0].temporary["b@mesh"].startswith("end of DATA: 451")
    assert s.outcomes[1].delivered == ["b@mesh"]
    assert "b@mesh" in s.outcomes[2].temporary and not s.outcomes[2].delivered


def test_mail_refused_in_a_flight_reads_the_rest_then_resets() -> None:
    s = _session(("b@mesh",), ("b@mesh",))
    s.receive_data(EHLO_PIPELINING)
    s.data_to_send()
    # MAIL refused: the server then refuses RCPT and DATA too; nothing is sent as body.
    s.receive_data(b"450 slow down\r\n503 need MAIL\r\n503 need RCPT\r\n")
    assert s.data_to_send() == b"RSET\r\n"
    assert s.outcomes[0].temporary["b@mesh"].startswith("MAIL FROM: 450")
    assert not s.outcomes[0].permanent  # the 503 for RCPT does not override the 450
    s.receive_data(b"250 ok\r\n")
    assert s.data_to_send() == b"MAIL FROM:<a@mesh>\r\nRCPT TO:<b@mesh>\r\nDATA\r\n"


def test_354_without_accepted_recipients_sends_an_empty_message() -> None:
    s = _session(("b@mesh",))
    s.receive_data(EHLO_PIPELINING)
    s.data_to_send()
    s.receive_data(b"250 ok\r\n550 no\r\n354 go anyway\r\n")
    assert s.data_to_send() == b".\r\n"  # not the message: nobody took it
    s.receive_data(b"250 ok\r\n")
    assert s.data_to_send() == b"QUIT\r\n"
    assert s.outcomes[0].delivered == [] and "b@mesh" in s.outcomes[0].permanent


def test_no_pipelining_without_the_extension() -> None:
    s = _session(("b@mesh",))
    s.receive_data(b"250-node\r\n250 8BITMIME\r\n")
    assert s.data_to_send() == b"MAIL FROM:<a@mesh>\r\n"


class _Handler:
    def __init__(self) -> None:
        self.stored: list[tuple[str, list[str], bytes]] = []
        self.ehlo: list[str] = []

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        reply = ehlo_with_pipelining(session, hostname, responses)
        self.ehlo = reply
        return reply

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address.startswith("nobody"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(0.01)  # a store commit: replies must still come in order
        self.stored.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 2.0.0 stored"


async def test_sessions_against_real_aiosmtpd_offering_pipelining() -> None:
    loop = asyncio.get_running_loop()
    handler = _Handler()
    server = await loop.create_server(
        lambda: MeshSMTP(handler, hostname="sink", loop=loop), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    mails = [
        Envelope("a@mesh", ("b@mesh", "nobody@mesh"), b"Subject: 1\r\n\r\n.dot\r\n"),
        Envelope("a@mesh", ("nobody@mesh",), b"Subject: 2\r\n\r\nx\r\n"),
        *(Envelope("a@mesh", ("b@mesh",), b"Subject: %d\r\n\r\nx\r\n" % i) for i in range(3, 8)),
    ]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        session = ClientSession("client", mails)
        outcomes = await run_session(session, reader, writer, timeout=10)
    finally:
        server.close()
        await server.wait_closed()
    assert "250-PIPELINING" in handler.ehlo and handler.ehlo[-1].startswith("250 ")
    assert session.extensions.keys() >= {"PIPELINING"}
    assert outcomes[0].delivered == ["b@mesh"] and "nobody@mesh" in outcomes[0].permanent
    assert outcomes[1].delivered == [] and "nobody@mesh" in outcomes[1].permanent
    assert all(o.delivered == ["b@mesh"] for o in outcomes[2:])
    subjects = [content.split(b"\r\n", 1)[0] for _, _, content in handler.stored]
    assert subjects == [b"Subject: %d" % i for i in (1, 3, 4, 5, 6, 7)]
    assert handler.stored[0][2] == b"Subject: 1\r\n\r\n.dot\r\n"
