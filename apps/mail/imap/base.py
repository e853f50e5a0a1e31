"""Session state shared by the command modules: states, errors, the selected-mailbox view."""

from __future__ import annotations

import asyncio
import bisect
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ..store import MailboxNotFound, MailStore
from .names import decode_mailbox, render_mailbox
from .parser import Value
from .seqset import SequenceSet
from .wire import render_flags, uid_set_text

__all__ = [
    "TRANSITIONS",
    "CommandFailed",
    "MailboxView",
    "SessionBase",
    "State",
    "astring",
    "atom",
]

log = logging.getLogger(__name__)

Writer = Callable[[bytes], Awaitable[None]]


class State(enum.Enum):
    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


# RFC 3501 section 3 (figure): every state change a session may make.
TRANSITIONS = frozenset(
    {
        (State.NOT_AUTHENTICATED, State.AUTHENTICATED),
        (State.NOT_AUTHENTICATED, State.LOGOUT),
        (State.AUTHENTICATED, State.SELECTED),
        (State.AUTHENTICATED, State.LOGOUT),
        (State.SELECTED, State.AUTHENTICATED),
        (State.SELECTED, State.LOGOUT),
    }
)


class CommandFailed(Exception):
    """Ends a command with a tagged ``NO`` or ``BAD``; ``code`` is a response code."""

    def __init__(self, status: str, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.code = code

    def line(self, tag: str) -> bytes:
        code = f"[{self.code}] " if self.code else ""
        return f"{tag} {self.status} {code}{self.text}\r\n".encode("utf-8", "replace")


def bad(text: str) -> CommandFailed:
    return CommandFailed("BAD", text)


def astring(value: Value, what: str = "argument") -> str:
    if isinstance(value, list):
        raise bad(f"{what} must be an atom or string, not a list")
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value


def atom(value: Value, what: str) -> str:
    if not isinstance(value, str):
        raise bad(f"{what} must be an atom")
    return value


@dataclass(slots=True)
class MailboxView:
    """What one session believes about its selected mailbox (RFC 3501 section 2.3.1.2)."""

    name: str
    readonly: bool
    uidvalidity: int
    uids: list[int]
    flags: dict[int, frozenset[str]]
    recent: set[int] = field(default_factory=set)
    dirty: bool = False

    def seq_of(self, uid: int) -> int | None:
        i = bisect.bisect_left(self.uids, uid)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else None

    def resolve(self, text: Value, uid_mode: bool) -> list[tuple[int, int]]:
        """(sequence number, UID) pairs of a sequence set, ascending."""
        try:
            seqset = SequenceSet.parse(atom(text, "sequence set"))
        except ValueError as exc:
            raise bad(str(exc)) from None
        if uid_mode:
            star = self.uids[-1] if self.uids else 0
            picked = seqset.select(self.uids, star)
            first = bisect.bisect_left(self.uids, picked[0]) if picked else 0
            if picked and self.uids[first : first + len(picked)] == picked:
                return [(first + 1 + i, uid) for i, uid in enumerate(picked)]
            return [(self.seq_of(uid) or 0, uid) for uid in picked]
        return [(n, self.uids[n - 1]) for n in seqset.sequence_numbers(len(self.uids))]

    def shown_flags(self, uid: int) -> frozenset[str]:
        flags = self.flags.get(uid, frozenset())
        return flags | {"\\Recent"} if uid in self.recent else flags

    def remove(self, uid: int) -> int | None:
        seq = self.seq_of(uid)
        if seq is not None:
            del self.uids[seq - 1]
            self.flags.pop(uid, None)
            self.recent.discard(uid)
        return seq


class SessionBase:
    """Attributes and helpers every command module uses."""

    def __init__(self, store: MailStore, write: Writer) -> None:
        self.store = store
        self.write = write
        self.state = State.NOT_AUTHENTICATED
        self.view: MailboxView | None = None
        self.condstore = False  # RFC 7162: on once the client used or enabled CONDSTORE
        self.qresync = False  # RFC 7162 section 3.2: only after ENABLE QRESYNC
        self.utf8 = False  # RFC 6855: names in UTF-8 (not modified UTF-7) once enabled
        self.wakeup = asyncio.Event()
        self._unsubscribe = [
            store.subscribe_new_mail(lambda box, _uid: self._mark_dirty(box)),
            store.subscribe_changes(self._mark_dirty),
        ]

    def mailbox_arg(self, value: Value, *, creating: bool = False, pattern: bool = False) -> str:
        """A mailbox name argument decoded (:mod:`.names`); an invalid one ends the
        command with ``NO [CANNOT]`` saying why."""
        if isinstance(value, list):
            raise bad("a mailbox name must be an atom or a string, not a list")
        try:
            return decode_mailbox(value, utf8=self.utf8, creating=creating, pattern=pattern)
        except ValueError as exc:
            raise CommandFailed("NO", f"invalid mailbox name: {exc}", "CANNOT") from None

    def render_name(self, name: str) -> bytes:
        """``name`` as this session writes mailbox names (modified UTF-7 or UTF-8)."""
        return render_mailbox(name, utf8=self.utf8)

    def set_state(self, new: State) -> None:
        """The one place the state changes; illegal transitions are bugs, not input errors."""
        if new is self.state:
            return
        if (self.state, new) not in TRANSITIONS:
            raise AssertionError(f"IMAP session cannot go from {self.state} to {new}")
        log.debug("IMAP session %s -> %s", self.state.value, new.value)
        self.state = new

    def _mark_dirty(self, mailbox: str) -> None:
        if self.view is not None and self.view.name == mailbox:
            self.view.dirty = True
            self.wakeup.set()

    def detach(self) -> None:
        """Stop listening to the store (the connection is gone)."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []

    def forget(self, uids: list[int]) -> bytes:
        """Drop expunged UIDs from the view; the responses that tell the client.

        ``* n EXPUNGE`` per message (highest sequence number first), or one
        ``* VANISHED <uids>`` once QRESYNC is enabled (RFC 7162 section 3.2.10).
        """
        view = self.require_view()
        out: list[bytes] = []
        gone: list[int] = []
        for uid in sorted(uids, reverse=True):
            seq = view.remove(uid)
            if seq is not None:
                out.append(b"* %d EXPUNGE\r\n" % seq)
                gone.append(uid)
        if self.qresync:
            return b"* VANISHED %s\r\n" % uid_set_text(sorted(gone)).encode() if gone else b""
        return b"".join(out)

    def require_view(self) -> MailboxView:
        if self.view is None:
            raise bad("no mailbox selected")
        return self.view

    async def sync(self, *, allow_expunge: bool) -> None:
        """Tell the client what changed in the selected mailbox since it last heard."""
        view = self.view
        if view is None or not view.dirty:
            return
        view.dirty = False
        try:
            entries, _ = await self.store.entries(view.name)
        except MailboxNotFound:
            await self.write(b"* BYE the selected mailbox was deleted\r\n")
            self.set_state(State.LOGOUT)
            return
        out: list[bytes] = []
        current = [(uid, flags) for uid, flags, _ in entries]
        modseqs = {uid: modseq for uid, _, modseq in entries}
        present = dict(current)
        if allow_expunge:
            out.append(self.forget([uid for uid in view.uids if uid not in present]))
        elif any(uid not in present for uid in view.uids):
            view.dirty = True  # report the expunges after a command that allows them
        last = view.uids[-1] if view.uids else 0
        new = [uid for uid, _ in current if uid > last]
        for uid, flags in current:
            if uid <= last and uid in view.flags and view.flags[uid] != flags:
                view.flags[uid] = flags
                extra = b" MODSEQ (%d)" % modseqs[uid] if self.condstore else b""
                out.append(
                    b"* %d FETCH (UID %d FLAGS %s%s)\r\n"
                    % (view.seq_of(uid) or 0, uid, render_flags(view.shown_flags(uid)), extra)
                )
        if new:
            view.uids.extend(new)
            view.flags.update((uid, present[uid]) for uid in new)
            if not view.readonly:
                view.recent |= await self.store.claim_recent(view.name)
            out.append(b"* %d EXISTS\r\n* %d RECENT\r\n" % (len(view.uids), len(view.recent)))
        if out:
            await self.write(b"".join(out))
