"""The sans-IO command parser, fed bytes, checked event by event."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from apps.mail.imap.parser import (
    Command,
    CommandParser,
    Event,
    NeedContinuation,
    ProtocolError,
    RawLine,
)


def events(parser: CommandParser, data: bytes) -> list[Event]:
    parser.receive_data(data)
    out: list[Event] = []
    while (event := parser.next_event()) is not None:
        out.append(event)
    return out


def test_simple_command_atoms_quoted_and_lists() -> None:
    p = CommandParser()
    got = events(p, b'a1 login "al\\"ice" secret\r\nA2 fetch 1:* (UID FLAGS)\r\n')
    assert got == [
        Command("a1", "LOGIN", (b'al"ice', "secret")),
        Command("A2", "FETCH", ("1:*", ["UID", "FLAGS"])),
    ]


def test_partial_input_waits_for_crlf() -> None:
    p = CommandParser()
    assert events(p, b"t NO") == []
    assert events(p, b"OP") == []
    assert events(p, b"\r\n") == [Command("t", "NOOP", ())]


def test_bare_lf_line_end_is_accepted() -> None:
    assert events(CommandParser(), b"t noop\n") == [Command("t", "NOOP", ())]


def test_fetch_section_with_spaces_and_parens_is_one_atom() -> None:
    got = events(
        CommandParser(), b"t UID FETCH 1:3 (BODY.PEEK[HEADER.FIELDS (From To)]<0.100>)\r\n"
    )
    assert got == [
        Command("t", "UID FETCH", ("1:3", ["BODY.PEEK[HEADER.FIELDS (From To)]<0.100>"]))
    ]


def test_synchronizing_literal_asks_for_continuation() -> None:
    p = CommandParser()
    assert events(p, b"a APPEND INBOX (\\Seen) {11}\r\n") == [NeedContinuation(11)]
    assert events(p, b"Hello") == []
    assert events(p, b" World\r\n") == [
        Command("a", "APPEND", ("INBOX", ["\\Seen"], b"Hello World"))
    ]


def test_non_synchronizing_literal_plus() -> None:
    p = CommandParser()
    got = events(p, b"a LOGIN {3+}\r\nbob {4+}\r\np\r\nw\r\n")
    assert got == [Command("a", "LOGIN", (b"bob", b"p\r\nw"))]


def test_literal_bytes_are_not_tokenized() -> None:
    got = events(CommandParser(), b'a APPEND x {7}\r\n(") {1}\r\n')
    assert got == [NeedContinuation(7), Command("a", "APPEND", ("x", b'(") {1}'))]


def test_syntax_errors_are_tagged_bad_and_parser_continues() -> None:
    p = CommandParser()
    got = events(p, b'a1 LOGIN "open\r\na2 x (((\r\n\r\na3 NOOP\r\n')
    assert got == [
        ProtocolError("a1", "unterminated quoted string", False),
        ProtocolError("a2", "unbalanced (", False),
        ProtocolError(None, "missing or invalid tag", False),
        Command("a3", "NOOP", ()),
    ]


def test_uid_without_subcommand() -> None:
    assert events(CommandParser(), b"t UID\r\n") == [
        ProtocolError("t", "UID needs a command", False)
    ]


def test_oversized_sync_literal_is_refused_and_framing_kept() -> None:
    p = CommandParser(max_literal=10)
    got = events(p, b"a APPEND INBOX {11}\r\nb NOOP\r\n")
    assert got == [
        ProtocolError("a", "literal of 11 octets exceeds 10", False),
        Command("b", "NOOP", ()),
    ]


def test_oversized_non_sync_literal_is_fatal() -> None:
    p = CommandParser(max_literal=10)
    got = events(p, b"a APPEND INBOX {11+}\r\nHello World\r\n")
    assert got == [ProtocolError(None, "literal of 11 octets exceeds 10", True)]
    assert p.dead and events(p, b"b NOOP\r\n") == []


def test_literals_outside_append_are_held_to_the_line_limit() -> None:
    p = CommandParser(max_line=100, max_literal=10_000)
    got = events(p, b"a LOGIN {101}\r\nb APPEND INBOX {5000}\r\n")
    assert got == [
        ProtocolError("a", "literal of 101 octets exceeds 100", False),
        NeedContinuation(5000),
    ]


def test_giant_line_is_fatal_before_crlf_arrives() -> None:
    p = CommandParser(max_line=100)
    got = events(p, b"a " + b"x" * 200)
    assert got == [ProtocolError(None, "command line longer than 100 octets", True)]


def test_raw_line_mode_for_idle_done() -> None:
    p = CommandParser()
    p.raw_line_mode = True
    assert events(p, b"DONE\r\n") == [RawLine(b"DONE")]


def test_nesting_is_bounded() -> None:
    got = events(CommandParser(), b"a SEARCH " + b"(" * 40 + b"ALL" + b")" * 40 + b"\r\n")
    assert got == [ProtocolError("a", "lists nested too deeply", False)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_fuzz_garbage_never_crashes(chunks: list[bytes]) -> None:
    p = CommandParser(max_line=256, max_literal=128)
    for chunk in chunks:
        p.receive_data(chunk)
        for _ in range(1000):
            event = p.next_event()
            if event is None:
                break
            assert isinstance(event, Command | NeedContinuation | ProtocolError | RawLine)
    assert len(p._buf) <= 256 + 300 + 128


_atoms = st.from_regex(r"[A-Za-z0-9.\\*:]{1,12}", fullmatch=True)
_quoted = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(_atoms, _quoted.map(lambda s: s.encode())), max_size=6))
def test_fuzz_roundtrip_of_well_formed_commands(args: list[str | bytes]) -> None:
    wire = b"t1 CMD"
    for arg in args:
        if isinstance(arg, bytes):
            wire += b' "' + arg.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
        else:
            wire += b" " + arg.encode()
    assert events(CommandParser(), wire + b"\r\n") == [Command("t1", "CMD", tuple(args))]
