"""A small SMTP client for node-to-node delivery: a sans-IO core and a thin asyncio adapter.

The core (:class:`ClientTransaction`) is fed the server's bytes (``receive_data``) and
hands back the bytes to write (``data_to_send``); it runs one mail transaction:
greeting, EHLO (HELO if EHLO is refused), ``MAIL FROM``, one ``RCPT TO`` per recipient,
``DATA`` with dot-stuffing (RFC 5321 section 4.5.2), ``QUIT``. No pipelining: every
command waits for its reply, which keeps the state machine one table.

Buffers are bounded: a reply line longer than :data:`MAX_REPLY_LINE` or a reply of more
than :data:`MAX_REPLY_LINES` lines is a remote protocol error, as is anything that is not
``NNN[ -]text``. The outcome is per recipient: delivered, temporary failure (4xx, or the
connection/protocol failed: retry later) or permanent failure (5xx: bounce).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
from dataclasses import dataclass, field

from core import within

from .message import normalize_crlf

__all__ = [
    "MAX_REPLY_LINE",
    "MAX_REPLY_LINES",
    "ClientSession",
    "ClientTransaction",
    "Envelope",
    "Outcome",
    "RemoteProtocolError",
    "Reply",
    "ReplyParser",
    "State",
    "dot_stuff",
    "run_session",
    "run_transaction",
]

log = logging.getLogger(__name__)

# RFC 5321 section 4.5.3.1.5: a reply line is at most 512 octets including CRLF.
# Servers in the wild overrun it a little; allow 1000 before calling it an error.
MAX_REPLY_LINE = 1000
MAX_REPLY_LINES = 100  # an EHLO reply lists extensions; 100 is far above any real one
_REPLY_LINE = re.compile(rb"^([2-5][0-9][0-9])([ -])(.*)$", re.S)
_LEADING_DOT = re.compile(rb"^\.", re.M)
WRITE_SLICE = 256 * 1024


class RemoteProtocolError(Exception):
    """The server sent something that is not SMTP (or overran a bound)."""


class LocalProtocolError(Exception):
    """This side misused the client (e.g. fed data after the transaction ended)."""


@dataclass(frozen=True, slots=True)
class Reply:
    """One (possibly multi-line) server reply."""

    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return " / ".join(line for line in self.lines if line) or "(no text)"

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def transient(self) -> bool:
        return 400 <= self.code < 500

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class ReplyParser:
    """Turns bytes into :class:`Reply` objects; bounded."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._code: int | None = None
        self._lines: list[str] = []

    def feed(self, data: bytes) -> list[Reply]:
        self._buffer += data
        replies: list[Reply] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_REPLY_LINE:
                    raise RemoteProtocolError(
                        f"reply line longer than {MAX_REPLY_LINE} bytes without a newline"
                    )
                return replies
            line = bytes(self._buffer[:end]).rstrip(b"\r")
            del self._buffer[: end + 1]
            if len(line) > MAX_REPLY_LINE:
                raise RemoteProtocolError(f"reply line longer than {MAX_REPLY_LINE} bytes")
            reply = self._line(line)
            if reply is not None:
                replies.append(reply)

    def _line(self, line: bytes) -> Reply | None:
        m = _REPLY_LINE.match(line)
        if m is None:
            if len(line) == 3 and line.isdigit() and line[:1] in b"2345":
                m = _REPLY_LINE.match(line + b" ")  # "250" alone is a valid last line
            if m is None:
                raise RemoteProtocolError(f"not an SMTP reply line: {line[:80]!r}")
        code = int(m.group(1))
        if self._code is not None and code != self._code:
            raise RemoteProtocolError(f"reply code changed mid-reply: {self._code} then {code}")
        self._code = code
        self._lines.append(m.group(3).decode("utf-8", "replace").strip())
        if len(self._lines) > MAX_REPLY_LINES:
            raise RemoteProtocolError(f"reply has more than {MAX_REPLY_LINES} lines")
        if m.group(2) == b"-":
            return None
        reply = Reply(code, tuple(self._lines))
        self._code, self._lines = None, []
        return reply


def dot_stuff(content: bytes) -> bytes:
    """The DATA payload for ``content``: CRLF line ends, leading dots doubled, ``.`` line."""
    body = normalize_crlf(content)
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    if body.startswith(b".") or b"\n." in body:
        body = _LEADING_DOT.sub(b"..", body)
    return body + b".\r\n"


class State(enum.Enum):
    GREETING = "greeting"
    EHLO = "ehlo"
    HELO = "helo"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    BODY = "body"
    RSET = "rset"
    QUIT = "quit"
    DONE = "done"
    ERROR = "error"


@dataclass
class Outcome:
    """What happened to each recipient of one message. ``error`` is set when the
    session failed before the message was decided."""

    delivered: list[str] = field(default_factory=list)
    temporary: dict[str, str] = field(default_factory=dict)
    permanent: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    def decided(self, rcpt: str) -> bool:
        return rcpt in self.delivered or rcpt in self.temporary or rcpt in self.permanent


@dataclass(frozen=True, slots=True)
class Envelope:
    mail_from: str
    recipients: tuple[str, ...]
    content: bytes


class ClientSession:
    """One SMTP session carrying one or more messages, without I/O.

    Messages go one after the other on the same connection (RFC 5321 section 3.3: a
    new ``MAIL`` after the end of a transaction; ``RSET`` after an aborted one), which
    spares the mesh a connection set-up per message. ``outcomes[i]`` tells what became
    of message ``i``.

    >>> mail = Envelope("a@mesh", ("b@mesh",), b"Subject: x\\r\\n\\r\\nhi\\r\\n")
    >>> s = ClientSession("me.mesh", [mail])
    >>> s.receive_data(b"220 ready\\r\\n"); s.data_to_send()
    b'EHLO me.mesh\\r\\n'
    """

    def __init__(self, helo_name: str, messages: list[Envelope], *, preamble: str = "") -> None:
        if not messages or any(not m.recipients for m in messages):
            raise LocalProtocolError("a session needs messages, each with a recipient")
        if not f"EHLO {helo_name}".startswith(preamble):
            raise LocalProtocolError("the preamble must begin the EHLO command")
        self.helo_name = helo_name
        # Bytes written before the greeting that begin our first command: a QUIC stream
        # is seen by its peer only once data flows (Yggmail's transport), so the client
        # speaks first with the start of ``EHLO`` and sends the rest after the greeting.
        self.preamble = preamble.encode()
        self._unsent_preamble = self.preamble
        self.messages = list(messages)
        self.outcomes = [Outcome() for _ in messages]
        self.state = State.GREETING
        self.extensions: dict[str, str] = {}
        self._parser = ReplyParser()
        self._outgoing = bytearray()
        self._index = 0
        self._rcpt_index = 0
        self._accepted: list[str] = []
        self._pipelining = False  # the server offered PIPELINING (RFC 2920)
        self._mail_ok = True
        self._sent_ahead: int | None = None  # message whose commands followed a body
        self._handlers = {
            State.GREETING: self._on_greeting,
            State.EHLO: self._on_ehlo,
            State.HELO: self._on_helo,
            State.MAIL: self._on_mail,
            State.RCPT: self._on_rcpt,
            State.DATA: self._on_data,
            State.BODY: self._on_body,
            State.RSET: self._on_rset,
            State.QUIT: self._on_quit,
        }

    # -- public surface -------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.state in (State.DONE, State.ERROR)

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the server; ``b""`` means the server closed the connection.

        A remote error ends the session (state ERROR): undecided recipients are
        temporary failures, to be retried.
        """
        if self.done:
            if data:
                raise LocalProtocolError(f"data received in state {self.state.value}")
            return
        if not data:
            if self.state is State.QUIT:  # every message is decided; 221 is a courtesy
                self._set_state(State.DONE)
            else:
                self._fail("the server closed the connection")
            return
        try:
            replies = self._parser.feed(data)
        except RemoteProtocolError as exc:
            self._fail(f"protocol error: {exc}")
            return
        for reply in replies:
            if self.done:
                break
            if reply.code == 421 and self.state is not State.QUIT:
                self._fail(f"{self.state.value}: {reply}")  # the server is closing
                break
            self._handlers[self.state](reply)

    def connection_failed(self, reason: str) -> None:
        """The transport failed (timeout, reset); undecided recipients retry later."""
        if self.state is State.QUIT:
            self._set_state(State.DONE)
        elif not self.done:
            self._fail(reason)

    def data_to_send(self) -> bytes:
        out = bytes(self._outgoing)
        self._outgoing.clear()
        if self._unsent_preamble and out:
            if out.startswith(self._unsent_preamble):  # the EHLO line: its start is out
                out = out[len(self._unsent_preamble) :]
            self._unsent_preamble = b""
        return out

    # -- transitions ----------------------------------------------------------------------
    @property
    def _message(self) -> Envelope:
        return self.messages[self._index]

    @property
    def _outcome(self) -> Outcome:
        return self.outcomes[self._index]

    def _send(self, line: str) -> None:
        self._outgoing += line.encode("utf-8") + b"\r\n"

    def _set_state(self, state: State) -> None:
        log.debug("smtp client %s -> %s", self.state.value, state.value)
        self.state = state

    def _fail(self, reason: str) -> None:
        """Session-level failure: every undecided recipient is a temporary failure."""
        pending = zip(self.messages[self._index :], self.outcomes[self._index :], strict=True)
        for message, outcome in pending:
            outcome.error = reason
            for rcpt in message.recipients:
                if not outcome.decided(rcpt):
                    outcome.temporary[rcpt] = reason
        self._set_state(State.ERROR)

    def _reject(self, reply: Reply, what: str, recipients: list[str] | tuple[str, ...]) -> None:
        bucket = self._outcome.temporary if reply.transient else self._outcome.permanent
        for rcpt in recipients:
            if not self._outcome.decided(rcpt):
                bucket[rcpt] = f"{what}: {reply}"

    def _reject_all_messages(self, reply: Reply, what: str) -> None:
        """A greeting/EHLO refusal: nothing can be sent in this session."""
        for index in range(len(self.messages)):
            self._index = index
            self._reject(reply, what, self._message.recipients)
        self._quit()

    def _quit(self) -> None:
        self._send("QUIT")
        self._set_state(State.QUIT)

    def _on_greeting(self, reply: Reply) -> None:
        if reply.code != 220:
            self._reject_all_messages(reply, "greeting")
            return
        self._send(f"EHLO {self.helo_name}")
        self._set_state(State.EHLO)

    def _on_ehlo(self, reply: Reply) -> None:
        if reply.code == 250:
            for line in reply.lines[1:]:
                name, _, value = line.partition(" ")
                self.extensions[name.upper()] = value
            self._pipelining = "PIPELINING" in self.extensions
            self._start_message()
        elif reply.code in (500, 502):  # EHLO unknown: a plain RFC 821 server
            self._send(f"HELO {self.helo_name}")
            self._set_state(State.HELO)
        else:
            self._reject_all_messages(reply, "EHLO")

    def _on_helo(self, reply: Reply) -> None:
        if reply.code == 250:
            self._start_message()
        else:
            self._reject_all_messages(reply, "HELO")

    def _fits(self, message: Envelope) -> bool:
        limit = self.extensions.get("SIZE", "")
        return not (limit.isdigit() and int(limit) and len(message.content) > int(limit))

    def _send_mail(self, message: Envelope) -> None:
        param = f" SIZE={len(message.content)}" if "SIZE" in self.extensions else ""
        if "8BITMIME" in self.extensions and not message.content.isascii():
            param += " BODY=8BITMIME"  # RFC 6152: say so when the body has 8-bit octets
        self._send(f"MAIL FROM:<{message.mail_from}>{param}")
        if self._pipelining:  # MAIL, every RCPT and DATA in one flight
            for rcpt in message.recipients:
                self._send(f"RCPT TO:<{rcpt}>")
            self._send("DATA")

    def _start_message(self) -> None:
        while self._index < len(self.messages):
            if self._fits(self._message):
                if self._sent_ahead != self._index:
                    self._send_mail(self._message)
                self._sent_ahead = None
                self._set_state(State.MAIL)
                self._rcpt_index, self._accepted, self._mail_ok = 0, [], True
                return
            size, limit = len(self._message.content), self.extensions["SIZE"]
            text = f"5.3.4 message is {size} bytes; the server takes at most {limit}"
            self._reject(Reply(552, (text,)), "SIZE", self._message.recipients)
            self._index += 1
        self._quit()

    def _next_message(self, *, reset: bool) -> None:
        self._index += 1
        if self._index < len(self.messages) and reset:
            self._send("RSET")
            self._set_state(State.RSET)
        else:
            self._start_message()

    def _on_rset(self, reply: Reply) -> None:
        if reply.code == 250:
            self._start_message()
        else:
            self._fail(f"RSET: {reply}")

    def _on_mail(self, reply: Reply) -> None:
        if reply.code == 250:
            self._next_rcpt()
        else:
            self._reject(reply, "MAIL FROM", self._message.recipients)
            if self._pipelining:  # the RCPT and DATA replies are on their way: read them
                self._mail_ok = False
                self._next_rcpt()
            else:
                self._next_message(reset=True)

    def _next_rcpt(self) -> None:
        if self._rcpt_index < len(self._message.recipients):
            if not self._pipelining:
                self._send(f"RCPT TO:<{self._message.recipients[self._rcpt_index]}>")
            self._set_state(State.RCPT)
        elif self._pipelining:  # DATA went with the RCPTs; its reply comes next
            self._set_state(State.DATA)
        elif self._accepted:
            self._send("DATA")
            self._set_state(State.DATA)
        else:
            self._next_message(reset=True)

    def _on_rcpt(self, reply: Reply) -> None:
        rcpt = self._message.recipients[self._rcpt_index]
        self._rcpt_index += 1
        if reply.code in (250, 251) and self._mail_ok:
            self._accepted.append(rcpt)
        else:
            self._reject(reply, "RCPT TO", [rcpt])
        self._next_rcpt()

    def _on_data(self, reply: Reply) -> None:
        if reply.code == 354:
            # Pipelined with no recipient accepted, a server may still say 354: an empty
            # message ends the transaction and its reply decides nothing.
            self._outgoing += dot_stuff(self._message.content) if self._accepted else b".\r\n"
            self._set_state(State.BODY)
            # The end of DATA ends the transaction whatever its reply: the next message's
            # commands may follow the body in the same flight (RFC 2920 section 3.1).
            ahead = self._index + 1
            if self._pipelining and ahead < len(self.messages) and self._fits(self.messages[ahead]):
                self._send_mail(self.messages[ahead])
                self._sent_ahead = ahead
        else:
            self._reject(reply, "DATA", self._accepted)
            self._next_message(reset=True)

    def _on_body(self, reply: Reply) -> None:
        if reply.code == 250:
            self._outcome.delivered.extend(self._accepted)
        else:
            self._reject(reply, "end of DATA", self._accepted)
        self._next_message(reset=False)

    def _on_quit(self, reply: Reply) -> None:
        self._set_state(State.DONE)


def ClientTransaction(
    helo_name: str, mail_from: str, recipients: list[str], content: bytes
) -> ClientSession:
    """A session with a single message (the common case)."""
    return ClientSession(helo_name, [Envelope(mail_from, tuple(recipients), content)])


async def run_transaction(
    txn: ClientSession,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    timeout: float = 120.0,
) -> Outcome:
    """:func:`run_session` for a one-message session: that message's outcome."""
    return (await run_session(txn, reader, writer, timeout=timeout))[0]


async def run_session(
    txn: ClientSession,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    timeout: float = 120.0,
) -> list[Outcome]:
    """Drive ``txn`` over a stream pair until it is done; close the writer at the end.

    ``timeout`` bounds every wait for the server (RFC 5321 section 4.5.3.2 suggests
    minutes; the mesh is slower than a LAN but a silent peer must not hold a slot).
    """
    try:
        if txn.preamble:
            writer.write(txn.preamble)
        while True:
            out = txn.data_to_send()
            # In slices, each drained: ``timeout`` bounds a stall, not a whole large body
            # on a slow path (a 20 MB message over Python QUIC on a busy machine).
            for start in range(0, len(out), WRITE_SLICE):
                writer.write(out[start : start + WRITE_SLICE])
                await within(writer.drain(), timeout)
            if txn.done:
                break
            data = await within(reader.read(65536), timeout)
            txn.receive_data(data)
    except TimeoutError:
        txn.connection_failed(f"no reply within {timeout:g} s in state {txn.state.value}")
    except (ConnectionError, OSError) as exc:
        txn.connection_failed(f"connection failed in state {txn.state.value}: {exc}")
    finally:
        writer.close()
        with contextlib.suppress(TimeoutError, ConnectionError, OSError):
            await within(writer.wait_closed(), 5.0)
    return txn.outcomes
