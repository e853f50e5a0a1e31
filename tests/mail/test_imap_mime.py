"""MIME tree, ENVELOPE and BODYSTRUCTURE on odd and hostile messages; SEARCH/FETCH parsers."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.mail.imap.fetch import parse_fetch_items
from apps.mail.imap.mime import (
    MAX_DEPTH,
    bodystructure,
    envelope,
    parse_message,
    section_bytes,
)
from apps.mail.imap.search import parse_search
from apps.mail.imap.seqset import SequenceSet


def test_message_without_body_separator() -> None:
    part = parse_message(b"Subject: only a header\r\n")
    assert part.header == b"Subject: only a header\r\n" and part.body == b""
    assert section_bytes(part, (), "TEXT", ()) == b""


def test_message_starting_with_empty_line_has_empty_header() -> None:
    part = parse_message(b"\r\nbody\r\n")
    assert part.header == b"\r\n" and part.body == b"body\r\n"
    assert envelope(part.fields) == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"


def test_multipart_without_boundary_is_treated_as_text() -> None:
    part = parse_message(b"Content-Type: multipart/mixed\r\n\r\nno parts\r\n")
    assert bodystructure(part).startswith(b'("TEXT" "PLAIN"')


def test_multipart_missing_close_delimiter_keeps_last_part() -> None:
    raw = b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\none\r\n--x\r\n\r\ntwo"
    part = parse_message(raw)
    assert [c.body for c in part.children] == [b"one", b"two"]
    assert section_bytes(part, (2,), "", ()) == b"two"
    with pytest.raises(LookupError):
        section_bytes(part, (3,), "", ())


def test_rfc2231_parameters_and_8bit_headers() -> None:
    raw = (
        b"Subject: caf\xc3\xa9\r\nFrom: \xc3\xa9 <e@x.mesh>\r\n"
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
        b"Content-Type: application/pdf\r\n"
        b"Content-Disposition: attachment; filename*=utf-8''r%C3%A9sum%C3%A9.pdf\r\n\r\n"
        b"%PDF\r\n--b--\r\n"
    )
    part = parse_message(raw)
    # 8-bit header text goes out as literals with the original bytes, never quoted strings.
    assert envelope(part.fields) == (
        b'(NIL {5}\r\ncaf\xc3\xa9 (({2}\r\n\xc3\xa9 NIL "e" "x.mesh")) '
        b'(({2}\r\n\xc3\xa9 NIL "e" "x.mesh")) (({2}\r\n\xc3\xa9 NIL "e" "x.mesh")) '
        b"NIL NIL NIL NIL NIL)"
    )
    # RFC 2231 parameters stay encoded (as Dovecot sends them); clients decode them.
    assert b'("ATTACHMENT" ("FILENAME*" "utf-8\'\'r%C3%A9sum%C3%A9.pdf"))' in bodystructure(part)


def test_nesting_bomb_is_bounded() -> None:
    raw = b""
    for depth in range(MAX_DEPTH * 3):
        raw = (
            b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (depth, depth)
            + raw
            + b"\r\n--b%d--\r\n" % depth
        )
    part = parse_message(raw)
    assert bodystructure(part).count(b'"MIXED"') <= MAX_DEPTH


def test_digest_children_default_to_message_rfc822() -> None:
    raw = (
        b"Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\n"
        b"Subject: inner\r\n\r\nhi\r\n--d--\r\n"
    )
    part = parse_message(raw)
    assert part.children[0].message is not None
    assert section_bytes(part, (1,), "HEADER", ()) == b"Subject: inner\r\n\r\n"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_parse_and_render(raw: bytes) -> None:
    part = parse_message(raw)
    assert isinstance(envelope(part.fields), bytes)
    assert isinstance(bodystructure(part), bytes)
    assert section_bytes(part, (), "", ()) == raw or not raw.startswith(b"\r\n")
    for parts in ((), (1,), (1, 1), (2,)):
        for text in ("", "HEADER", "TEXT", "MIME", "HEADER.FIELDS"):
            with contextlib.suppress(LookupError):
                section_bytes(part, parts, text, ("subject",))


_mime_pieces = st.sampled_from(
    [
        b"Content-Type: multipart/mixed; boundary=z\r\n",
        b"Content-Type: message/rfc822\r\n",
        b'Content-Type: text/plain; charset="x\r\n',
        b"Content-Disposition: attachment; filename*0=a; filename*1=b\r\n",
        b'From: "unterminated <a@b\r\n',
        b"To: group: a@b, c@d;\r\n",
        b"\r\n",
        b"--z\r\n",
        b"--z--\r\n",
        b"body text\r\n",
        b" folded continuation\r\n",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_mime_pieces, max_size=30))
def test_structured_garbage_parses(pieces: list[bytes]) -> None:
    part = parse_message(b"".join(pieces))
    bodystructure(part)
    bodystructure(part, extended=False)
    envelope(part.fields)


_values = st.recursive(
    st.one_of(
        st.sampled_from(["ALL", "OR", "NOT", "UID", "1:*", "SINCE", "1-Jan-2024", "HEADER",
                         "LARGER", "10", "KEYWORD", "SEEN", "x", "CHARSET", "*"]),
        st.binary(max_size=10),
    ),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(_values, max_size=8))
def test_search_parser_only_raises_value_or_lookup_error(args: list[object]) -> None:
    with contextlib.suppress(ValueError, LookupError):
        parse_search(args)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40), st.lists(st.text(max_size=40), max_size=4)))
def test_fetch_item_parser_only_raises_value_error(value: object) -> None:
    with contextlib.suppress(ValueError):
        parse_fetch_items(value, uid_command=False)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789:*,", max_size=20), st.integers(0, 50))
def test_sequence_sets(text: str, count: int) -> None:
    try:
        seqset = SequenceSet.parse(text)
    except ValueError:
        return
    numbers = seqset.sequence_numbers(count)
    assert numbers == sorted(set(numbers)) and all(1 <= n <= count for n in numbers)
