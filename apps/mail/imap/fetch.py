"""FETCH items: parsing ``fetch-att`` (RFC 3501 section 6.4.5) and rendering one message."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ..store import MessageMeta
from .mime import (
    MimePart,
    bodystructure,
    header_fields,
    parse_message,
    section_bytes,
    split_header,
)
from .parser import Value
from .wire import format_internal_date, istring, render_flags

__all__ = ["FetchItem", "FetchRequest", "parse_fetch_items", "render_fetch"]

_MACROS = {
    "ALL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"],
    "FAST": ["FLAGS", "INTERNALDATE", "RFC822.SIZE"],
    "FULL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"],
}
_SIMPLE = frozenset(
    {
        "FLAGS",
        "UID",
        "INTERNALDATE",
        "RFC822.SIZE",
        "RFC822",
        "RFC822.HEADER",
        "RFC822.TEXT",
        "ENVELOPE",
        "BODYSTRUCTURE",
        "MODSEQ",
        "BODY",
    }
)
_BODY_ITEM = re.compile(r"^(BODY|BODY\.PEEK)\[([^\]]*)\](?:<(\d+)\.(\d+)>)?$", re.I)
_SECTION = re.compile(
    r"^((?:[1-9]\d*)(?:\.[1-9]\d*)*)?\.?(HEADER\.FIELDS\.NOT|HEADER\.FIELDS|HEADER|TEXT|MIME)?"
    r"(?:\s*\((.*)\))?$",
    re.I,
)


@dataclass(frozen=True, slots=True)
class FetchItem:
    name: str  # a simple item name, or "BODY[]" for sections
    section_label: str = ""  # as echoed in the response: the text between [ ]
    parts: tuple[int, ...] = ()
    text: str = ""
    fields: tuple[str, ...] = ()
    partial: tuple[int, int] | None = None
    peek: bool = False


@dataclass(frozen=True, slots=True)
class FetchRequest:
    items: tuple[FetchItem, ...]
    needs_body: bool  # full raw message required
    needs_header: bool  # top-level header enough
    sets_seen: bool


def _parse_section(label: str) -> tuple[tuple[int, ...], str, tuple[str, ...]]:
    m = _SECTION.match(label.strip())
    if m is None:
        raise ValueError(f"bad section [{label}]")
    parts = tuple(int(p) for p in m.group(1).split(".")) if m.group(1) else ()
    text = (m.group(2) or "").upper()
    fields: tuple[str, ...] = ()
    if text.startswith("HEADER.FIELDS"):
        if m.group(3) is None or not m.group(3).strip():
            raise ValueError(f"{text} needs a list of field names")
        fields = tuple(f.strip('"') for f in m.group(3).split())
    elif m.group(3) is not None:
        raise ValueError(f"bad section [{label}]")
    if text == "MIME" and not parts:
        raise ValueError("MIME needs a part number")
    return parts, text, fields


def _parse_one(atom: str) -> list[FetchItem]:
    upper = atom.upper()
    if upper in _MACROS:
        return [FetchItem(n) for n in _MACROS[upper]]
    if upper in _SIMPLE:
        return [FetchItem(upper)]
    m = _BODY_ITEM.match(atom)
    if m is None:
        raise ValueError(f"unknown FETCH item {atom!r}")
    parts, text, fields = _parse_section(m.group(2))
    partial = (int(m.group(3)), int(m.group(4))) if m.group(3) is not None else None
    label = m.group(2)
    if text.startswith("HEADER.FIELDS"):
        label = text + " (" + " ".join(f.upper() for f in fields) + ")"
        if parts:
            label = ".".join(map(str, parts)) + "." + label
    peek = m.group(1).upper() != "BODY"
    return [FetchItem("BODY[]", label, parts, text, fields, partial, peek)]


def parse_fetch_items(value: Value, *, uid_command: bool) -> FetchRequest:
    """Parse the FETCH argument (an atom or a list of atoms); ValueError when invalid."""
    atoms: list[Value] = value if isinstance(value, list) else [value]
    if not atoms:
        raise ValueError("empty FETCH item list")
    items: list[FetchItem] = []
    for atom in atoms:
        if not isinstance(atom, str):
            raise ValueError("FETCH items must be atoms")
        items.extend(_parse_one(atom))
    if uid_command and not any(i.name == "UID" for i in items):
        items.insert(0, FetchItem("UID"))
    header_ok = {"HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT"}
    needs_body = any(
        i.name in ("RFC822", "RFC822.TEXT", "BODY")
        or (i.name == "BODY[]" and (i.parts or i.text not in header_ok))
        for i in items
    )
    needs_header = needs_body or any(i.name in ("RFC822.HEADER", "BODY[]") for i in items)
    sets_seen = any(
        i.name in ("RFC822", "RFC822.TEXT") or (i.name == "BODY[]" and not i.peek) for i in items
    )
    return FetchRequest(tuple(items), needs_body, needs_header, sets_seen)


def _slice(data: bytes, partial: tuple[int, int] | None) -> tuple[bytes, str]:
    if partial is None:
        return data, ""
    start, length = partial
    return data[start : start + length], f"<{start}>"


_META_ITEMS: dict[str, Callable[[MessageMeta, frozenset[str]], bytes]] = {
    "UID": lambda m, f: b"UID %d" % m.uid,
    "FLAGS": lambda m, f: b"FLAGS " + render_flags(f),
    "INTERNALDATE": lambda m, f: b"INTERNALDATE " + format_internal_date(m.internal_date),
    "RFC822.SIZE": lambda m, f: b"RFC822.SIZE %d" % m.size,
    "ENVELOPE": lambda m, f: b"ENVELOPE " + m.envelope,
    "BODYSTRUCTURE": lambda m, f: b"BODYSTRUCTURE " + m.bodystructure,
    "MODSEQ": lambda m, f: b"MODSEQ (%d)" % m.modseq,
}
_RAW_ITEMS: dict[str, Callable[[bytes], bytes]] = {
    "RFC822": lambda raw: b"RFC822 " + istring(raw),
    "RFC822.HEADER": lambda raw: b"RFC822.HEADER " + istring(split_header(raw)[0]),
    "RFC822.TEXT": lambda raw: b"RFC822.TEXT " + istring(split_header(raw)[1]),
}


def render_fetch(
    seq: int,
    meta: MessageMeta,
    request: FetchRequest,
    raw: bytes | None,
    flags: frozenset[str],
) -> bytes:
    """One ``* <seq> FETCH (...)`` response line (with literals) for one message."""
    out: list[bytes] = []
    part: MimePart | None = None
    for item in request.items:
        from_meta = _META_ITEMS.get(item.name)
        if from_meta is not None:
            out.append(from_meta(meta, flags))
            continue
        assert raw is not None, "the request needs message bytes"
        from_raw = _RAW_ITEMS.get(item.name)
        if from_raw is not None:
            out.append(from_raw(raw))
        elif item.name == "BODY[]" and not item.parts:
            out.append(_labelled(item, _top_section(item, raw)))
        else:
            if part is None:
                part = parse_message(raw)
            out.append(_render_body_item(item, part))
    return b"* %d FETCH (" % seq + b" ".join(out) + b")\r\n"


def _top_section(item: FetchItem, raw: bytes) -> bytes:
    """Top-level sections straight from the raw bytes: no MIME parse (header listings)."""
    if item.text == "":
        return raw
    header, body = split_header(raw)
    if item.text == "TEXT":
        return body
    if item.text == "HEADER":
        return header
    return header_fields(header, list(item.fields), exclude=item.text.endswith(".NOT"))


def _render_body_item(item: FetchItem, part: MimePart) -> bytes:
    if item.name == "BODY":
        return b"BODY " + bodystructure(part, extended=False)
    try:
        data = section_bytes(part, item.parts, item.text, item.fields)
    except LookupError:
        data = b""
    return _labelled(item, data)


def _labelled(item: FetchItem, data: bytes) -> bytes:
    data, origin = _slice(data, item.partial)
    label = f"BODY[{item.section_label}]{origin}".encode("utf-8", "replace")
    return label + b" " + istring(data)
