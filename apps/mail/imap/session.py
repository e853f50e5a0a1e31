"""One IMAP4rev1 connection's state machine: events from the parser in, response bytes out.

The session never touches a socket: bytes arrive through :meth:`ImapSession.receive_data`
and leave through the ``write`` coroutine it was given. The store is its only collaborator.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import datetime

from ..passwords import LoginBusy
from ..store import MailboxExists, MailboxNotFound, MailStore, StoreError, normalize_mailbox
from .base import CommandFailed, MailboxView, State, Writer, astring, atom, bad
from .parser import (
    Command,
    CommandParser,
    Event,
    NeedContinuation,
    ProtocolError,
    RawLine,
    Value,
)
from .qresync import SelectParams, parse_select_params, resync
from .selected import SelectedCommands
from .wire import parse_date_time

__all__ = ["CAPABILITIES", "Authenticator", "ImapSession"]

log = logging.getLogger(__name__)

Authenticator = Callable[[str, str], Awaitable[bool]]

CAPABILITIES = (
    "IMAP4rev1 LITERAL+ SASL-IR AUTH=PLAIN IDLE UIDPLUS MOVE SPECIAL-USE LIST-EXTENDED "
    "CHILDREN UNSELECT ENABLE NAMESPACE ID CONDSTORE QRESYNC UTF8=ACCEPT"
)
MAX_AUTH_FAILURES = 5
SYSTEM_FLAGS = "\\Answered \\Flagged \\Deleted \\Seen \\Draft"
STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ")
ANY = frozenset({State.NOT_AUTHENTICATED, State.AUTHENTICATED, State.SELECTED})
AUTHED = frozenset({State.AUTHENTICATED, State.SELECTED})
SELECTED = frozenset({State.SELECTED})
NOT_AUTHED = frozenset({State.NOT_AUTHENTICATED})
# Commands during which untagged EXPUNGE must not be sent (RFC 3501 section 7.4.1).
NO_EXPUNGE_DURING = frozenset({"FETCH", "STORE", "SEARCH"})

Handler = Callable[[Command], Awaitable[str | None]]


class ImapSession(SelectedCommands):
    def __init__(
        self, store: MailStore, authenticator: Authenticator, username: str, write: Writer
    ) -> None:
        super().__init__(store, write)
        self.authenticator = authenticator
        self.username = username
        self.parser = CommandParser()
        self.lock = asyncio.Lock()
        self.idle_tag: str | None = None
        self._auth_tag: str | None = None
        self._auth_failures = 0
        self._handlers: dict[str, tuple[Handler, frozenset[State]]] = {
            "CAPABILITY": (self.cmd_capability, ANY),
            "NOOP": (self.cmd_noop, ANY),
            "LOGOUT": (self.cmd_logout, ANY),
            "LOGIN": (self.cmd_login, NOT_AUTHED),
            "AUTHENTICATE": (self.cmd_authenticate, NOT_AUTHED),
            "ENABLE": (self.cmd_enable, AUTHED),
            "NAMESPACE": (self.cmd_namespace, AUTHED),
            "ID": (self.cmd_id, ANY),
            "LIST": (self.cmd_list, AUTHED),
            "LSUB": (self.cmd_lsub, AUTHED),
            "CREATE": (self.cmd_create, AUTHED),
            "DELETE": (self.cmd_delete, AUTHED),
            "RENAME": (self.cmd_rename, AUTHED),
            "SUBSCRIBE": (self.cmd_subscribe, AUTHED),
            "UNSUBSCRIBE": (self.cmd_unsubscribe, AUTHED),
            "SELECT": (self.cmd_select, AUTHED),
            "EXAMINE": (self.cmd_examine, AUTHED),
            "STATUS": (self.cmd_status, AUTHED),
            "APPEND": (self.cmd_append, AUTHED),
            "IDLE": (self.cmd_idle, AUTHED),
            "CHECK": (self.cmd_check, SELECTED),
            "CLOSE": (self.cmd_close, SELECTED),
            "UNSELECT": (self.cmd_unselect, SELECTED),
            "EXPUNGE": (self.cmd_expunge, SELECTED),
            "SEARCH": (self.cmd_search, SELECTED),
            "FETCH": (self.cmd_fetch, SELECTED),
            "STORE": (self.cmd_store, SELECTED),
            "COPY": (self.cmd_copy, SELECTED),
            "MOVE": (self.cmd_move, SELECTED),
        }
        for name in ("FETCH", "STORE", "COPY", "MOVE", "SEARCH", "EXPUNGE"):
            self._handlers["UID " + name] = (self.cmd_uid, SELECTED)

    # --- driving -------------------------------------------------------------------------

    def greeting(self) -> bytes:
        return f"* OK [CAPABILITY {CAPABILITIES}] meshsuite IMAP4rev1 ready\r\n".encode()

    @property
    def finished(self) -> bool:
        return self.state is State.LOGOUT

    async def receive_data(self, data: bytes) -> None:
        async with self.lock:
            self.parser.receive_data(data)
            while not self.finished:
                event = self.parser.next_event()
                if event is None:
                    return
                await self._handle_event(event)

    async def on_wakeup(self) -> None:
        """The store changed the selected mailbox; push updates when idling."""
        async with self.lock:
            if self.idle_tag is not None and not self.finished:
                await self.sync(allow_expunge=True)

    async def _handle_event(self, event: Event) -> None:
        if isinstance(event, NeedContinuation):
            await self.write(b"+ Ready for literal data\r\n")
        elif isinstance(event, ProtocolError):
            if event.fatal:
                await self.write(f"* BYE {event.message}\r\n".encode())
                self.set_state(State.LOGOUT)
            else:
                await self.write(f"{event.tag or '*'} BAD {event.message}\r\n".encode())
        elif isinstance(event, RawLine):
            await self._raw_line(event.line)
        else:
            await self._dispatch(event)

    async def _dispatch(self, cmd: Command) -> None:
        log.debug("IMAP %s %s", cmd.tag[:40], cmd.name[:40])  # never the arguments (passwords)
        entry = self._handlers.get(cmd.name)
        try:
            if entry is None:
                raise bad(f"unknown command {cmd.name[:40]!r}")
            handler, states = entry
            if self.state not in states:
                raise bad(f"{cmd.name} is not allowed in the {self.state.value} state")
            text = await handler(cmd)
        except CommandFailed as exc:
            await self._finish_sync(cmd)
            await self.write(exc.line(cmd.tag))
            return
        except StoreError as exc:
            await self.write(CommandFailed("NO", str(exc)).line(cmd.tag))
            return
        except (ConnectionError, TimeoutError):
            raise
        except Exception:
            log.exception("IMAP %s failed", cmd.name[:40])
            failure = CommandFailed("NO", "internal server error, see the node log", "SERVERBUG")
            await self.write(failure.line(cmd.tag))
            return
        if text is None:
            return  # the command continues (IDLE, AUTHENTICATE) or ended the session
        await self._finish_sync(cmd)
        await self.write(f"{cmd.tag} OK {text}\r\n".encode("utf-8", "replace"))

    async def _finish_sync(self, cmd: Command) -> None:
        if self.view is not None and not self.finished:
            await self.sync(allow_expunge=cmd.name not in NO_EXPUNGE_DURING)

    async def _raw_line(self, line: bytes) -> None:
        self.parser.raw_line_mode = False
        if self.idle_tag is not None:
            tag, self.idle_tag = self.idle_tag, None
            if line.strip().upper() == b"DONE":
                await self.write(f"{tag} OK IDLE terminated\r\n".encode())
            else:
                await self.write(f"{tag} BAD expected DONE to end IDLE\r\n".encode())
        elif self._auth_tag is not None:
            tag, self._auth_tag = self._auth_tag, None
            if line.strip() == b"*":
                await self.write(f"{tag} BAD authentication cancelled\r\n".encode())
                return
            await self._finish_plain(tag, line.strip())

    # --- any state -----------------------------------------------------------------------

    async def cmd_capability(self, cmd: Command) -> str:
        await self.write(f"* CAPABILITY {CAPABILITIES}\r\n".encode())
        return "CAPABILITY completed"

    async def cmd_noop(self, cmd: Command) -> str:
        return "NOOP completed"

    async def cmd_logout(self, cmd: Command) -> None:
        await self.write(f"* BYE logging out\r\n{cmd.tag} OK LOGOUT completed\r\n".encode())
        self.set_state(State.LOGOUT)

    # --- authentication ------------------------------------------------------------------

    async def _authenticate(self, user: str, password: str) -> bool:
        try:  # the authenticator slows guessing node-wide (SMTP included)
            ok = user.lower() == self.username.lower() and await self.authenticator(user, password)
        except LoginBusy as exc:
            raise CommandFailed("NO", str(exc), "UNAVAILABLE") from None
        if ok:
            self.set_state(State.AUTHENTICATED)
            log.info("IMAP login for %s", user)
            return True
        self._auth_failures += 1
        log.warning("IMAP login failed for %r", user[:100])
        return False

    async def _auth_failed(self, tag: str) -> None:
        await self.write(f"{tag} NO [AUTHENTICATIONFAILED] invalid credentials\r\n".encode())
        if self._auth_failures >= MAX_AUTH_FAILURES:
            await self.write(b"* BYE too many failed logins\r\n")
            self.set_state(State.LOGOUT)

    async def cmd_login(self, cmd: Command) -> str | None:
        if len(cmd.args) != 2:
            raise bad("LOGIN needs a user name and a password")
        user, password = astring(cmd.args[0], "user"), astring(cmd.args[1], "password")
        if await self._authenticate(user, password):
            return f"[CAPABILITY {CAPABILITIES}] LOGIN completed"
        await self._auth_failed(cmd.tag)
        return None

    async def cmd_authenticate(self, cmd: Command) -> None:
        if not cmd.args or atom(cmd.args[0], "mechanism").upper() != "PLAIN":
            raise CommandFailed("NO", "only AUTHENTICATE PLAIN is supported")
        if len(cmd.args) > 1:  # SASL-IR (RFC 4959)
            initial = astring(cmd.args[1], "initial response").encode()
            await self._finish_plain(cmd.tag, b"" if initial == b"=" else initial)
            return
        self._auth_tag = cmd.tag
        self.parser.raw_line_mode = True
        await self.write(b"+ \r\n")

    async def _finish_plain(self, tag: str, encoded: bytes) -> None:
        try:
            authz, user, password = base64.b64decode(encoded, validate=True).split(b"\0")
            authz_s, user_s = authz.decode(), user.decode()
            password_s = password.decode()
        except (binascii.Error, ValueError, UnicodeDecodeError):
            await self.write(f"{tag} BAD malformed PLAIN response\r\n".encode())
            return
        if authz_s and authz_s != user_s:
            await self._auth_failed(tag)
            return
        try:
            ok = await self._authenticate(user_s, password_s)
        except CommandFailed as exc:
            await self.write(exc.line(tag))
            return
        if ok:
            await self.write(f"{tag} OK [CAPABILITY {CAPABILITIES}] authenticated\r\n".encode())
        else:
            await self._auth_failed(tag)

    async def cmd_namespace(self, cmd: Command) -> str:
        # RFC 2342: one personal namespace, no prefix, "/" as the hierarchy delimiter.
        await self.write(b'* NAMESPACE (("" "/")) NIL NIL\r\n')
        return "NAMESPACE completed"

    async def cmd_id(self, cmd: Command) -> str:
        # RFC 2971: the client's ID is only logged; ours names the software, nothing more.
        if len(cmd.args) != 1:
            raise bad("ID needs one argument: a list of field/value pairs or NIL")
        log.debug("IMAP client ID %r", cmd.args[0])
        await self.write(b'* ID ("name" "meshsuite")\r\n')
        return "ID completed"

    async def cmd_enable(self, cmd: Command) -> str:
        asked = {atom(v, "capability").upper() for v in cmd.args}
        if not asked:
            raise bad("ENABLE needs at least one capability")
        enabled = b""
        if "CONDSTORE" in asked:
            self.condstore = True
            enabled += b" CONDSTORE"
        if "QRESYNC" in asked:  # implies CONDSTORE (RFC 7162 section 3.2.3)
            self.condstore = self.qresync = True
            enabled += b" QRESYNC"
        if "UTF8=ACCEPT" in asked:  # RFC 6855: mailbox names in UTF-8 from now on
            self.utf8 = True
            enabled += b" UTF8=ACCEPT"
        await self.write(b"* ENABLED" + enabled + b"\r\n")
        return "ENABLE completed"

    # --- mailboxes -----------------------------------------------------------------------

    async def cmd_create(self, cmd: Command) -> str:
        name = self.mailbox_arg(self._one_arg(cmd), creating=True)
        try:
            await self.store.create_mailbox(name)
        except MailboxExists as exc:
            raise CommandFailed("NO", str(exc), "ALREADYEXISTS") from None
        return "CREATE completed"

    async def cmd_delete(self, cmd: Command) -> str:
        name = self.mailbox_arg(self._one_arg(cmd))
        try:
            await self.store.delete_mailbox(name)
        except MailboxNotFound as exc:
            raise CommandFailed("NO", str(exc), "NONEXISTENT") from None
        return "DELETE completed"

    async def cmd_rename(self, cmd: Command) -> str:
        if len(cmd.args) != 2:
            raise bad("RENAME needs the old and the new name")
        old = self.mailbox_arg(cmd.args[0])
        new = self.mailbox_arg(cmd.args[1], creating=True)
        old_name, new_name = normalize_mailbox(old), normalize_mailbox(new.rstrip("/"))
        if old_name != "INBOX" and (new_name == old_name or new_name.startswith(old_name + "/")):
            # RFC 9051 6.3.6: a mailbox cannot become its own descendant (INBOX excepted:
            # renaming it moves its messages, RFC 3501 6.3.5)
            raise CommandFailed(
                "NO", f"cannot rename {old!r} to itself or into its own subtree", "CANNOT"
            )
        try:
            await self.store.rename_mailbox(old, new)
        except MailboxNotFound as exc:
            raise CommandFailed("NO", str(exc), "NONEXISTENT") from None
        except MailboxExists as exc:
            raise CommandFailed("NO", str(exc), "ALREADYEXISTS") from None
        return "RENAME completed"

    async def cmd_subscribe(self, cmd: Command) -> str:
        await self.store.set_subscribed(self.mailbox_arg(self._one_arg(cmd)), True)
        return "SUBSCRIBE completed"

    async def cmd_unsubscribe(self, cmd: Command) -> str:
        await self.store.set_subscribed(self.mailbox_arg(self._one_arg(cmd)), False)
        return "UNSUBSCRIBE completed"

    def _one_arg(self, cmd: Command) -> Value:
        if len(cmd.args) != 1:
            raise bad(f"{cmd.name} needs exactly one argument")
        return cmd.args[0]

    async def cmd_list(self, cmd: Command) -> str:
        await self._list(cmd, "LIST")
        return "LIST completed"

    async def cmd_lsub(self, cmd: Command) -> str:
        await self._list(cmd, "LSUB")
        return "LSUB completed"

    async def _list(self, cmd: Command, verb: str) -> None:
        args = list(cmd.args)
        select: set[str] = set()
        if verb == "LIST" and args and isinstance(args[0], list):
            options = args.pop(0)
            assert isinstance(options, list)
            select = {atom(v, "selection option").upper() for v in options}
        if len(args) not in (2, 4):
            raise bad(f"{verb} needs a reference and a mailbox pattern")
        reference = self.mailbox_arg(args[0], pattern=True)
        patterns = args[1] if isinstance(args[1], list) else [args[1]]
        returns: set[str] = set()
        if len(args) == 4:
            if atom(args[2], "RETURN").upper() != "RETURN" or not isinstance(args[3], list):
                raise bad("expected RETURN (options)")
            returns = {atom(v, "return option").upper() for v in args[3]}
        texts = [self.mailbox_arg(p, pattern=True) for p in patterns]
        if texts == [""] and verb == "LIST":
            await self.write(b'* LIST (\\Noselect) "/" ""\r\n')
            return
        lines = await _list_lines(
            self.store, verb, reference, texts, select, returns, self.render_name
        )
        await self.write(b"".join(lines))

    async def cmd_select(self, cmd: Command) -> str:
        return await self._select(cmd, readonly=False)

    async def cmd_examine(self, cmd: Command) -> str:
        return await self._select(cmd, readonly=True)

    async def _select(self, cmd: Command, *, readonly: bool) -> str:
        params = SelectParams()
        if len(cmd.args) == 2 and isinstance(cmd.args[1], list):  # RFC 7162 parameters
            params = parse_select_params(cmd.args[1], qresync_enabled=self.qresync)
            self.condstore = self.condstore or params.condstore
        elif len(cmd.args) != 1:
            raise bad(f"{cmd.name} needs a mailbox name")
        name = self.mailbox_arg(cmd.args[0])
        if self.view is not None:  # RFC 7162 section 3.2.11
            await self.write(b"* OK [CLOSED] previous mailbox closed\r\n")
        self.view = None
        self.set_state(State.AUTHENTICATED)
        try:
            info = await self.store.mailbox(name)
            triples, highest = await self.store.entries(name)
            recent = set() if readonly else await self.store.claim_recent(name)
        except MailboxNotFound as exc:
            raise CommandFailed("NO", str(exc), "NONEXISTENT") from None
        entries = [(uid, flags) for uid, flags, _ in triples]
        uids = [uid for uid, _ in entries]
        view = MailboxView(info.name, readonly, info.uidvalidity, uids, dict(entries), recent)
        keywords = sorted({f for _, fl in entries for f in fl if not f.startswith("\\")})
        flags = " ".join([SYSTEM_FLAGS, *keywords])
        permanent = "" if readonly else flags + " \\*"
        lines = [
            f"* FLAGS ({flags})",
            f"* OK [PERMANENTFLAGS ({permanent})] flags permitted",
            f"* {len(uids)} EXISTS",
            f"* {len(recent)} RECENT",
        ]
        first_unseen = next((i + 1 for i, (_, f) in enumerate(entries) if "\\Seen" not in f), 0)
        if first_unseen:
            lines.append(f"* OK [UNSEEN {first_unseen}] first unseen")
        lines += [
            f"* OK [UIDVALIDITY {info.uidvalidity}] UIDs valid",
            f"* OK [UIDNEXT {info.uidnext}] predicted next UID",
            f"* OK [HIGHESTMODSEQ {highest}] highest",
        ]
        if params.uidvalidity is not None:
            log.debug("%s %s with QRESYNC from modseq %d", cmd.name, name, params.modseq)
        extra = resync(params, info.uidvalidity, info.uidnext, triples, recent)
        await self.write(("\r\n".join(lines) + "\r\n").encode() + extra)
        self.view = view
        self.set_state(State.SELECTED)
        verb = "EXAMINE" if readonly else "SELECT"
        return f"[{'READ-ONLY' if readonly else 'READ-WRITE'}] {verb} completed"

    async def cmd_status(self, cmd: Command) -> str:
        if len(cmd.args) != 2 or not isinstance(cmd.args[1], list):
            raise bad("STATUS needs a mailbox and a list of items")
        name = self.mailbox_arg(cmd.args[0])
        items = [atom(v, "status item").upper() for v in cmd.args[1]]
        unknown = [i for i in items if i not in STATUS_ITEMS]
        if unknown:
            raise bad(f"unknown STATUS items {unknown}: use {' '.join(STATUS_ITEMS)}")
        try:
            status = await self.store.status(name)
        except MailboxNotFound as exc:
            raise CommandFailed("NO", str(exc), "NONEXISTENT") from None
        values = {
            "MESSAGES": status.messages,
            "RECENT": status.recent,
            "UIDNEXT": status.uidnext,
            "UIDVALIDITY": status.uidvalidity,
            "UNSEEN": status.unseen,
            "HIGHESTMODSEQ": status.highest_modseq,
        }
        if "HIGHESTMODSEQ" in items:
            self.condstore = True
        body = " ".join(f"{i} {values[i]}" for i in items).encode()
        await self.write(b"* STATUS " + self.render_name(name) + b" (" + body + b")\r\n")
        return "STATUS completed"

    async def cmd_append(self, cmd: Command) -> str:
        args = self._utf8_append_data(list(cmd.args))
        if len(args) < 2 or not isinstance(args[-1], bytes):
            raise bad("APPEND needs a mailbox and a message literal")
        name = self.mailbox_arg(args[0])
        flags: list[str] = []
        when: datetime | None = None
        for extra in args[1:-1]:
            if isinstance(extra, list):
                flags = [atom(f, "flag") for f in extra if f != "\\Recent"]
            else:
                try:
                    when = parse_date_time(astring(extra, "date-time"))
                except ValueError as exc:
                    raise bad(str(exc)) from None
        try:
            info = await self.store.mailbox(name)
            uid = await self.store.deliver(name, args[-1], flags=flags, internal_date=when)
        except MailboxNotFound:
            raise CommandFailed("NO", f"no mailbox named {name!r}", "TRYCREATE") from None
        except StoreError as exc:
            raise bad(str(exc)) from None
        return f"[APPENDUID {info.uidvalidity} {uid}] APPEND completed"

    def _utf8_append_data(self, args: list[Value]) -> list[Value]:
        """``APPEND box ... UTF8 (~{n}<message>)`` (RFC 6855 section 4) as a plain APPEND."""
        if len(args) < 3 or not isinstance(args[-1], list):
            return args
        marker, data = args[-2], args[-1]
        if not (isinstance(marker, str) and marker.upper() == "UTF8"):
            return args
        if not self.utf8:
            raise bad("APPEND ... UTF8 (...) needs ENABLE UTF8=ACCEPT first (RFC 6855)")
        if len(data) != 2 or data[0] != "~" or not isinstance(data[1], bytes):
            raise bad("expected UTF8 (~{size}) followed by the message")
        return [*args[:-2], data[1]]

    async def cmd_idle(self, cmd: Command) -> None:
        self.idle_tag = cmd.tag
        self.parser.raw_line_mode = True
        await self.write(b"+ idling\r\n")
        if self.view is not None:
            await self.sync(allow_expunge=True)


def _pattern(reference: str, pattern: str) -> re.Pattern[str]:
    full = reference + pattern
    out = "".join(".*" if c == "*" else "[^/]*" if c == "%" else re.escape(c) for c in full)
    return re.compile(f"^{out}$", re.IGNORECASE if full.upper().startswith("INBOX") else 0)


async def _list_lines(
    store: MailStore,
    verb: str,
    reference: str,
    patterns: list[str],
    select: set[str],
    returns: set[str],
    render: Callable[[str], bytes],
) -> list[bytes]:
    boxes = {b.name: b for b in await store.list_mailboxes()}
    names = set(boxes)
    for name in boxes:  # parents that do not exist still appear, as \Noselect
        parts = name.split("/")
        names.update("/".join(parts[:i]) for i in range(1, len(parts)))
    regexes = [_pattern(reference, p) for p in patterns]
    subscribed_names = [b.name for b in boxes.values() if b.subscribed]
    lines: list[bytes] = []
    for name in sorted(names, key=lambda n: (n != "INBOX", n)):
        if not any(r.match(name) for r in regexes):
            continue
        box = boxes.get(name)
        subscribed = box is not None and box.subscribed
        if (verb == "LSUB" or "SUBSCRIBED" in select) and not subscribed:
            # RFC 3501 section 6.3.9: a parent whose subscribed children the pattern
            # leaves out (``%``) is listed as \Noselect, so a client can walk down to them.
            if verb == "LSUB" and any(
                s.startswith(name + "/") and not any(r.match(s) for r in regexes)
                for s in subscribed_names
            ):
                lines.append(b'* LSUB (\\Noselect) "/" ' + render(name) + b"\r\n")
            continue
        if "SPECIAL-USE" in select and (box is None or not box.special_use):
            continue
        attrs = [] if box is not None else ["\\Noselect"]
        has_children = any(other.startswith(name + "/") for other in names)
        attrs.append("\\HasChildren" if has_children else "\\HasNoChildren")
        if box is not None and box.special_use and verb == "LIST":
            attrs.append(box.special_use)
        if subscribed and ("SUBSCRIBED" in select or "SUBSCRIBED" in returns):
            attrs.append("\\Subscribed")
        lines.append(f'* {verb} ({" ".join(attrs)}) "/" '.encode() + render(name) + b"\r\n")
    return lines
