"""CONDSTORE/QRESYNC pieces of SELECT and UID FETCH (RFC 7162): parameters and resync data.

Expunged UIDs are not logged with their modseqs, so ``VANISHED (EARLIER)`` lists every UID
below UIDNEXT that is gone (within the client's known UIDs when it sent them). That can
include UIDs the client already forgot; clients treat such UIDs as no-ops.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import bad
from .parser import Value
from .seqset import SequenceSet, absent_ranges, clip_ranges, ranges_text
from .wire import render_flags

__all__ = ["FetchModifiers", "SelectParams", "parse_fetch_modifiers", "parse_select_params"]


@dataclass(frozen=True, slots=True)
class SelectParams:
    condstore: bool = False
    uidvalidity: int | None = None  # set when the client sent (QRESYNC (...))
    modseq: int = 0
    known_uids: SequenceSet | None = None


@dataclass(frozen=True, slots=True)
class FetchModifiers:
    changed_since: int | None = None
    vanished: bool = False


def _number(value: Value, what: str) -> int:
    if not isinstance(value, str) or not value.isdigit():
        raise bad(f"{what} must be a number")
    return int(value)


def parse_select_params(params: list[Value], *, qresync_enabled: bool) -> SelectParams:
    """``(CONDSTORE)`` or ``(QRESYNC (uidvalidity modseq [known-uids [seq-match]]))``."""
    condstore = False
    i = 0
    while i < len(params):
        item = params[i]
        name = item.upper() if isinstance(item, str) else ""
        if name == "CONDSTORE":
            condstore = True
            i += 1
            continue
        if name != "QRESYNC" or i + 1 >= len(params) or not isinstance(params[i + 1], list):
            raise bad("SELECT/EXAMINE parameters: (CONDSTORE) or (QRESYNC (uidvalidity modseq))")
        if not qresync_enabled:
            raise bad("QRESYNC must be enabled first: ENABLE QRESYNC")
        spec = params[i + 1]
        assert isinstance(spec, list)
        if len(spec) < 2:
            raise bad("QRESYNC needs at least the UIDVALIDITY and a mod-sequence")
        known = None
        if len(spec) > 2:
            if not isinstance(spec[2], str):
                raise bad("QRESYNC known UIDs must be a sequence set")
            try:
                known = SequenceSet.parse(spec[2])
            except ValueError as exc:
                raise bad(str(exc)) from None
        # A fourth element (sequence-number/UID match data) is an optional hint; not needed
        # here because the server recomputes VANISHED from the mailbox itself.
        return SelectParams(
            True, _number(spec[0], "UIDVALIDITY"), _number(spec[1], "mod-sequence"), known
        )
    return SelectParams(condstore)


def parse_fetch_modifiers(value: Value, *, uid_mode: bool, qresync: bool) -> FetchModifiers:
    """``(CHANGEDSINCE n)`` or, in UID FETCH with QRESYNC, ``(CHANGEDSINCE n VANISHED)``."""
    if not isinstance(value, list):
        raise bad("FETCH modifiers must be a list: (CHANGEDSINCE n)")
    changed_since: int | None = None
    vanished = False
    i = 0
    while i < len(value):
        item = value[i]
        name = item.upper() if isinstance(item, str) else ""
        if name == "CHANGEDSINCE" and i + 1 < len(value):
            changed_since = _number(value[i + 1], "CHANGEDSINCE")
            i += 2
        elif name == "VANISHED":
            vanished = True
            i += 1
        else:
            raise bad("FETCH modifiers: (CHANGEDSINCE n) or (CHANGEDSINCE n VANISHED)")
    if changed_since is None:
        raise bad("FETCH modifiers need CHANGEDSINCE")
    if vanished and not (uid_mode and qresync):
        raise bad("VANISHED needs UID FETCH and ENABLE QRESYNC")
    return FetchModifiers(changed_since, vanished)


def vanished_earlier(present: list[int], uidnext: int, within: SequenceSet | None) -> bytes:
    """``* VANISHED (EARLIER) ...`` for UIDs below ``uidnext`` that are gone."""
    missing = absent_ranges(present, uidnext - 1)
    if within is not None:
        missing = clip_ranges(missing, within, uidnext - 1)
    if not missing:
        return b""
    return b"* VANISHED (EARLIER) " + ranges_text(missing).encode() + b"\r\n"


def resync(
    params: SelectParams,
    uidvalidity: int,
    uidnext: int,
    entries: list[tuple[int, frozenset[str], int]],
    recent: set[int],
) -> bytes:
    """What a QRESYNC SELECT adds: vanished UIDs and changed flags since the client's modseq."""
    if params.uidvalidity != uidvalidity:
        return b""  # the client's cache is void; it must resynchronise from scratch
    out = [vanished_earlier([uid for uid, _, _ in entries], uidnext, params.known_uids)]
    for seq, (uid, flags, modseq) in enumerate(entries, start=1):
        if modseq > params.modseq:
            shown = flags | {"\\Recent"} if uid in recent else flags
            out.append(
                b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n"
                % (seq, uid, render_flags(shown), modseq)
            )
    return b"".join(out)
