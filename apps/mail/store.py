"""The node's mailbox store: SQLite (aiosqlite, WAL), one body per message, UID-keyed entries.

* A message body is stored once (``bodies``) with its parsed ENVELOPE and BODYSTRUCTURE
  cached at delivery time; mailboxes hold entries (``messages``: uid, flags, internal date,
  modseq) that point at bodies, so COPY never duplicates bytes.
* UIDs come from a per-mailbox persistent counter and are never reused; every mailbox gets
  a random UIDVALIDITY that is recorded forever, so a re-created mailbox never repeats one.
* ``deliver`` commits before returning (``synchronous=FULL``: in WAL mode ``NORMAL`` may lose
  the last commits on power loss, and SMTP has already said "250 OK" for them).

All access goes through one connection serialised by an :class:`asyncio.Lock`, so a
transaction of one coroutine never interleaves with statements of another.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from core import AppDatabase, MeshError

from .message import normalize_crlf
from .store_deliver import Missing, PendingDelivery, Prepared, deliver_rows
from .store_schema import MIGRATIONS

__all__ = [
    "DEFAULT_MAILBOXES",
    "SYSTEM_FLAGS",
    "MailStore",
    "MailboxExists",
    "MailboxInfo",
    "MailboxNotFound",
    "MailboxStatus",
    "MessageMeta",
    "StoreError",
    "normalize_flags",
    "normalize_mailbox",
]

log = logging.getLogger(__name__)

MAX_MESSAGE_SIZE = 64 * 1024 * 1024
DEDUP_RETENTION = 90 * 24 * 3600  # seconds a dedup key is remembered
DEFAULT_MAILBOXES: tuple[tuple[str, str | None], ...] = (
    ("INBOX", None),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
)
SYSTEM_FLAGS = {f.lower(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")}
_KEYWORD = re.compile(r"^[!#$&'+,\-.0-9:;<=>?@A-Z^_`a-z|}~]+$")


class StoreError(MeshError):
    """A mail store operation was refused; the message says why."""


class MailboxNotFound(StoreError):
    pass


class MailboxExists(StoreError):
    pass


@dataclass(frozen=True, slots=True)
class MailboxInfo:
    name: str
    special_use: str | None
    subscribed: bool
    uidvalidity: int
    uidnext: int
    highest_modseq: int


@dataclass(frozen=True, slots=True)
class MailboxStatus:
    messages: int
    recent: int
    unseen: int
    uidnext: int
    uidvalidity: int
    highest_modseq: int


@dataclass(frozen=True, slots=True)
class MessageMeta:
    uid: int
    flags: frozenset[str]
    internal_date: datetime
    size: int
    envelope: bytes
    bodystructure: bytes
    sent_date: float | None
    modseq: int


def normalize_mailbox(name: str) -> str:
    """INBOX is case-insensitive (RFC 3501 section 5.1); other names are kept as given."""
    if name.upper() == "INBOX":
        return "INBOX"
    if name.upper().startswith("INBOX/"):
        return "INBOX" + name[5:]
    return name


def normalize_flags(flags: Iterable[str]) -> frozenset[str]:
    out: set[str] = set()
    for flag in flags:
        if flag.startswith("\\"):
            canonical = SYSTEM_FLAGS.get(flag.lower())
            if canonical is None:
                raise StoreError(f"{flag!r} is not a storable system flag")
            out.add(canonical)
        elif _KEYWORD.match(flag):
            out.add(flag)
        else:
            raise StoreError(f"{flag!r} is not a valid keyword (an IMAP atom)")
    return frozenset(out)


def _split_flags(text: str) -> frozenset[str]:
    return frozenset(text.split()) if text else frozenset()


def _date_parts(when: datetime | None) -> tuple[float, int]:
    if when is None:
        when = datetime.now(UTC).astimezone()
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    offset = when.utcoffset() or timedelta(0)
    return when.timestamp(), int(offset.total_seconds()) // 60


def _to_datetime(stamp: float, tz_minutes: int) -> datetime:
    return datetime.fromtimestamp(stamp, timezone(timedelta(minutes=tz_minutes)))


def _prepare(raw: bytes) -> Prepared:
    # Imported here: the imap package imports this module (store <- imap.session).
    from .imap.mime import bodystructure, envelope, parse_message, split_header

    raw = normalize_crlf(raw)  # IMAP requires CRLF line ends (RFC 3501 section 2.3.1)
    if len(raw) > MAX_MESSAGE_SIZE:
        raise StoreError(f"message of {len(raw)} bytes exceeds the {MAX_MESSAGE_SIZE} limit")
    part = parse_message(raw)
    sent: float | None = None
    date_value = part.fields.get("date")
    if date_value is not None:
        try:
            sent = email.utils.parsedate_to_datetime(str(date_value)).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError, OSError):
            sent = None
    header, _ = split_header(raw)
    return Prepared(raw, len(header), envelope(part.fields), bodystructure(part), sent)


MAX_GROUP_COMMIT = 64  # deliveries sharing one transaction at most
PREPARE_INLINE = 64 * 1024  # messages up to this size are parsed on the event loop

NewMailCallback = Callable[[str, int], None]
ChangeCallback = Callable[[str], None]


class MailStore:
    """The mailbox store. Create with ``await MailStore.open(path)``; ``await close()``."""

    def __init__(self, database: AppDatabase) -> None:
        self._database = database
        self._db = database.conn
        self.path = database.path
        self._lock = database.lock  # every access to ``_db``, reads included
        self._new_mail: list[NewMailCallback] = []
        self._changes: list[ChangeCallback] = []
        # Deliveries: a whole transaction per hop to the writer thread, shared (group commit).
        self._deliveries = database.group_commit(
            _deliver_batch, max_batch=MAX_GROUP_COMMIT, name="mail store"
        )

    # --- lifecycle -----------------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path) -> MailStore:
        path = Path(path)
        # Private mail: AppDatabase creates the file owner-only (0600).
        database = await AppDatabase.open(
            path, MIGRATIONS, what="the mail store", name="mail-store-writer"
        )
        store = cls(database)
        try:
            if database.found_version == 1:
                await store._names_to_unicode()
            await store._init_defaults()
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        await self._database.close()

    async def _names_to_unicode(self) -> None:
        """Version 1 kept names as clients sent them: decode the modified UTF-7 ones."""
        from .imap.names import decode_mutf7  # imap imports this module

        async with self._lock, self._tx():
            rows = await self._all("SELECT id, name FROM mailboxes WHERE instr(name, '&') > 0")
            for row_id, name in rows:
                try:
                    decoded = decode_mutf7(name)
                except ValueError:
                    continue  # not modified UTF-7: a name of its own, kept as it is
                if await self._mailbox_row(decoded, required=False) is not None:
                    log.warning("mail store: kept %r: %r exists already", name, decoded)
                    continue
                await self._db.execute(
                    "UPDATE mailboxes SET name = ? WHERE id = ?", (decoded, row_id)
                )
                log.info("mail store: mailbox %r is now named %r", name, decoded)

    async def _init_defaults(self) -> None:
        async with self._lock, self._tx():
            cutoff = time.time() - DEDUP_RETENTION
            await self._db.execute("DELETE FROM dedup WHERE created < ?", (cutoff,))
            for name, special in DEFAULT_MAILBOXES:
                if special is None:
                    present = await self._mailbox_row(name, required=False)
                else:  # a renamed Sent keeps its role: look for the role, not the name
                    present = await self._one(
                        "SELECT 1 FROM mailboxes WHERE special_use = ?", (special,)
                    )
                if present is None and await self._mailbox_row(name, required=False) is None:
                    await self._insert_mailbox(name, special)

    # --- plumbing ------------------------------------------------------------------------

    def _tx(self) -> AbstractAsyncContextManager[Any]:
        return self._database.begin()  # the caller holds ``_lock``

    async def _one(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        async with self._db.execute(sql, args) as cur:
            return await cur.fetchone()

    async def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        async with self._db.execute(sql, args) as cur:
            return list(await cur.fetchall())

    async def _mailbox_row(self, name: str, *, required: bool = True) -> Any:
        row = await self._one(
            "SELECT id, name, special_use, subscribed, uidvalidity, uidnext, modseq, recent_uid "
            "FROM mailboxes WHERE name = ?",
            (normalize_mailbox(name),),
        )
        if row is None and required:
            raise MailboxNotFound(f"no mailbox named {name!r}")
        return row

    async def _insert_mailbox(self, name: str, special_use: str | None) -> None:
        while True:
            value = secrets.randbelow(2**32 - 1) + 1
            used = await self._one("SELECT 1 FROM used_uidvalidity WHERE value = ?", (value,))
            if used is None:
                break
        await self._db.execute("INSERT INTO used_uidvalidity (value) VALUES (?)", (value,))
        await self._db.execute(
            "INSERT INTO mailboxes (name, special_use, uidvalidity) VALUES (?, ?, ?)",
            (normalize_mailbox(name), special_use, value),
        )

    def _notify_new(self, events: list[tuple[str, int]]) -> None:
        for mailbox, uid in events:
            for callback in list(self._new_mail):
                try:
                    callback(mailbox, uid)
                except Exception:
                    log.exception("new-mail subscriber failed")

    def _notify_change(self, mailbox: str) -> None:
        for callback in list(self._changes):
            try:
                callback(mailbox)
            except Exception:
                log.exception("mailbox-change subscriber failed")

    # --- subscriptions -------------------------------------------------------------------

    def subscribe_new_mail(self, callback: NewMailCallback) -> Callable[[], None]:
        """Call ``callback(mailbox, uid)`` after each new message is committed."""
        self._new_mail.append(callback)

        def unsubscribe() -> None:
            if callback in self._new_mail:
                self._new_mail.remove(callback)

        return unsubscribe

    def subscribe_changes(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call ``callback(mailbox)`` after flags changed or messages were expunged."""
        self._changes.append(callback)

        def unsubscribe() -> None:
            if callback in self._changes:
                self._changes.remove(callback)

        return unsubscribe

    # --- delivery ------------------------------------------------------------------------

    async def deliver(
        self,
        mailbox: str,
        raw: bytes,
        *,
        flags: Iterable[str] = (),
        internal_date: datetime | None = None,
        dedup_key: str | None = None,
    ) -> int | None:
        """Store ``raw`` durably; the new UID, or None if ``dedup_key`` was seen before.

        Returns after the commit. Concurrent deliveries share one transaction (group
        commit, :mod:`core.groupcommit`), each acknowledged only after that commit.
        """
        clean_flags = normalize_flags(flags)
        # Parsing is pure Python (it holds the GIL either way): a thread only pays off by
        # keeping the event loop responsive while a large message is parsed.
        if len(raw) <= PREPARE_INLINE:
            prepared = _prepare(raw)
        else:
            prepared = await asyncio.to_thread(_prepare, raw)
        stamp, tz = _date_parts(internal_date)
        item = PendingDelivery(
            normalize_mailbox(mailbox), prepared, clean_flags, stamp, tz, dedup_key
        )
        done = await self._deliveries.submit(item)
        if done is None:
            return None
        self._notify_new([done])
        return done[1]

    async def _add_entry(
        self, box: Any, body_id: Any, flags: frozenset[str], stamp: float, tz: int
    ) -> tuple[int, int]:
        row = await self._one("SELECT uidnext, modseq FROM mailboxes WHERE id = ?", (box[0],))
        uid, modseq = int(row[0]), int(row[1]) + 1
        await self._db.execute(
            "UPDATE mailboxes SET uidnext = ?, modseq = ? WHERE id = ?", (uid + 1, modseq, box[0])
        )
        await self._db.execute(
            "INSERT INTO messages (mailbox_id, uid, body_id, flags, internal_date, internal_tz, "
            "modseq) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (box[0], uid, body_id, " ".join(sorted(flags)), stamp, tz, modseq),
        )
        return uid, modseq

    # --- simple reads --------------------------------------------------------------------

    async def count(self, mailbox: str) -> int:
        async with self._lock:
            box = await self._mailbox_row(mailbox)
            row = await self._one("SELECT count(*) FROM messages WHERE mailbox_id = ?", (box[0],))
        return int(row[0])

    async def list_uids(self, mailbox: str) -> list[int]:
        async with self._lock:
            box = await self._mailbox_row(mailbox)
            rows = await self._all(
                "SELECT uid FROM messages WHERE mailbox_id = ? ORDER BY uid", (box[0],)
            )
        return [int(r[0]) for r in rows]

    async def fetch_raw(self, mailbox: str, uid: int) -> bytes | None:
        got = await self.fetch_bodies(mailbox, [uid])
        return got.get(uid)

    async def get_flags(self, mailbox: str, uid: int) -> set[str]:
        async with self._lock:
            box = await self._mailbox_row(mailbox)
            row = await self._one(
                "SELECT flags FROM messages WHERE mailbox_id = ? AND uid = ?", (box[0], uid)
            )
        if row is None:
            raise StoreError(f"no message with UID {uid} in {mailbox!r}")
        return set(_split_flags(row[0]))

    async def fetch_bodies(
        self, mailbox: str, uids: Iterable[int], *, header_only: bool = False
    ) -> dict[int, bytes]:
        """Raw messages (or only their header block) by UID; missing UIDs are left out."""
        wanted = set(uids)
        if not wanted:
            return {}
        column = "substr(b.raw, 1, b.header_size)" if header_only else "b.raw"
        async with self._lock:
            box = await self._mailbox_row(mailbox)
            rows = await self._all(
                f"SELECT m.uid, {column} FROM messages m JOIN bodies b ON b.id = m.body_id "
                "WHERE m.mailbox_id = ? AND m.uid BETWEEN ? AND ?",
                (box[0], min(wanted), max(wanted)),
            )
        return {int(uid): bytes(raw) for uid, raw in rows if uid in wanted}

    async def fetch_meta(
        self, mailbox: str, uids: Iterable[int] | None = None
    ) -> list[MessageMeta]:
        """Cached per-message data (flags, dates, size, envelope...) in UID order."""
        wanted = None if uids is None else set(uids)
        if wanted is not None and not wanted:
            return []
        low, high = (1, 2**63 - 1) if wanted is None else (min(wanted), max(wanted))
        async with self._lock:
            box = await self._mailbox_row(mailbox)
            rows = await self._all(
                "SELECT m.uid, m.flags, m.internal_date, m.internal_tz, b.size, b.envelope, "
                "b.bodystructure, b.sent_date, m.modseq FROM messages m "
                "JOIN bodies b ON b.id = m.body_id "
                "WHERE m.mailbox_id = ? AND m.uid BETWEEN ? AND ? ORDER BY m.uid",
                (box[0], low, high),
            )
        return [
            MessageMeta(
                uid,
                _split_flags(flags),
                _to_datetime(stamp, tz),
                size,
                bytes(env),
                bytes(bs),
                sent,
                modseq,
            )
            for uid, flags, stamp, tz, size, env, bs, sent, modseq in rows
            if wanted is None or uid in wanted
        ]

    async def uid_flags(self, mailbox: str) -> tuple[list[tuple[int, frozenset[str]]], int]:
        """Every (uid, flags) in UID order and the mailbox's current modseq, atomically."""
        async with self._lock:
            box = await self._mailbox_row(mailbox)
            rows = await self._all(
                "SELECT uid, flags FROM messages WHERE mailbox_id = ? ORDER BY uid", (box[0],)
            )
        return [(int(u), _split_flags(f)) for u, f in rows], int(box[6])

    async def changed_since(
        self, mailbox: str, modseq: int
    ) -> tuple[list[tuple[int, frozenset[str]]], int]:
        """(uid, flags) of entries changed after ``modseq``, and the current modseq."""
        async with self._lock:
            box = await self._mailbox_row(mailbox)
            rows = await self._all(
                "SELECT uid, flags FROM messages WHERE mailbox_id = ? AND modseq > ? ORDER BY uid",
                (box[0], modseq),
            )
        return [(int(u), _split_flags(f)) for u, f in rows], int(box[6])

    # --- mailboxes -----------------------------------------------------------------------

    def _info(self, row: Any) -> MailboxInfo:
        return MailboxInfo(row[1], row[2], bool(row[3]), int(row[4]), int(row[5]), int(row[6]))

    async def list_mailboxes(self) -> list[MailboxInfo]:
        async with self._lock:
            rows = await self._all(
                "SELECT id, name, special_use, subscribed, uidvalidity, uidnext, modseq, "
                "recent_uid FROM mailboxes ORDER BY name"
            )
        return [self._info(r) for r in rows]

    async def mailbox(self, name: str) -> MailboxInfo:
        async with self._lock:
            return self._info(await self._mailbox_row(name))

    async def status(self, name: str) -> MailboxStatus:
        async with self._lock:
            box = await self._mailbox_row(name)
            rows = await self._all(
                "SELECT uid, flags FROM messages WHERE mailbox_id = ?", (box[0],)
            )
        unseen = sum(1 for _, f in rows if "\\Seen" not in f.split())
        recent = sum(1 for u, _ in rows if u > box[7])
        return MailboxStatus(len(rows), recent, unseen, int(box[5]), int(box[4]), int(box[6]))

    async def create_mailbox(self, name: str, special_use: str | None = None) -> MailboxInfo:
        name = normalize_mailbox(name.rstrip("/"))
        if not name:
            raise StoreError("a mailbox name must not be empty")
        async with self._lock:
            async with self._tx():
                if await self._mailbox_row(name, required=False) is not None:
                    raise MailboxExists(f"mailbox {name!r} already exists")
                if special_use is None:  # a re-created "Sent" gets \Sent back if nobody has it
                    special_use = await self._vacant_role(name)
                await self._insert_mailbox(name, special_use)
            return self._info(await self._mailbox_row(name))

    async def _vacant_role(self, name: str) -> str | None:
        for default, use in DEFAULT_MAILBOXES:
            if use is not None and default == name:
                held = await self._one("SELECT 1 FROM mailboxes WHERE special_use = ?", (use,))
                return None if held is not None else use
        return None

    async def special_mailbox(self, use: str, default: str) -> str:
        """The name of the mailbox with special-use ``use`` (RFC 6154), wherever it was
        renamed. If none has it (the person deleted it), ``default`` gets it: created if
        missing, so filing a Sent copy never fails because of a client's DELETE."""
        async with self._lock, self._tx():
            row = await self._one("SELECT name FROM mailboxes WHERE special_use = ?", (use,))
            if row is not None:
                return str(row[0])
            if await self._mailbox_row(default, required=False) is None:
                await self._insert_mailbox(default, use)
            else:
                await self._db.execute(
                    "UPDATE mailboxes SET special_use = ? WHERE name = ?",
                    (use, normalize_mailbox(default)),
                )
        log.info("mail store: %s is now the %s mailbox", default, use)
        return normalize_mailbox(default)

    async def delete_mailbox(self, name: str) -> None:
        if normalize_mailbox(name) == "INBOX":
            raise StoreError("INBOX cannot be deleted")
        async with self._lock, self._tx():
            box = await self._mailbox_row(name)
            await self._db.execute("DELETE FROM messages WHERE mailbox_id = ?", (box[0],))
            await self._db.execute("DELETE FROM mailboxes WHERE id = ?", (box[0],))
            await self._gc_bodies()
        self._notify_change(box[1])

    async def rename_mailbox(self, old: str, new: str) -> None:
        """Rename a mailbox and its children; renaming INBOX moves its messages (RFC 3501)."""
        new = normalize_mailbox(new.rstrip("/"))
        if normalize_mailbox(old) == "INBOX":
            await self.create_mailbox(new)
            uids = await self.list_uids("INBOX")
            if uids:
                await self.move("INBOX", uids, new)
            return
        async with self._lock, self._tx():
            # An implied parent (\Noselect: only its children exist) renames its children.
            box = await self._mailbox_row(old, required=False)
            old_name = box[1] if box is not None else normalize_mailbox(old.rstrip("/"))
            prefix = old_name + "/"
            rows = await self._all(
                "SELECT id, name FROM mailboxes WHERE id = ? OR substr(name, 1, ?) = ?",
                (box[0] if box is not None else None, len(prefix), prefix),
            )
            if not rows:
                raise MailboxNotFound(f"no mailbox named {old!r}")
            moving = {int(r[0]) for r in rows}
            renames = [(new + name[len(old_name) :], int(row_id)) for row_id, name in rows]
            for target, _ in renames:
                clash = await self._mailbox_row(target, required=False)
                if clash is not None and int(clash[0]) not in moving:
                    raise MailboxExists(f"mailbox {target!r} already exists")
            # Two steps so that no intermediate name collides inside the moved subtree.
            scratch = f"\x01{secrets.token_hex(8)}\x01"
            for target, row_id in renames:
                await self._db.execute(
                    "UPDATE mailboxes SET name = ? WHERE id = ?", (scratch + target, row_id)
                )
            await self._db.execute(
                "UPDATE mailboxes SET name = substr(name, ?) WHERE substr(name, 1, ?) = ?",
                (len(scratch) + 1, len(scratch), scratch),
            )
        self._notify_change(old_name)

    async def set_subscribed(self, name: str, subscribed: bool) -> None:
        async with self._lock, self._tx():
            box = await self._mailbox_row(name)
            await self._db.execute(
                "UPDATE mailboxes SET subscribed = ? WHERE id = ?", (int(subscribed), box[0])
            )

    async def claim_recent(self, name: str) -> set[int]:
        """UIDs new since the last claim; the caller's session owns their \\Recent flag."""
        async with self._lock, self._tx():
            box = await self._mailbox_row(name)
            rows = await self._all(
                "SELECT uid FROM messages WHERE mailbox_id = ? AND uid > ?", (box[0], box[7])
            )
            await self._db.execute(
                "UPDATE mailboxes SET recent_uid = ? WHERE id = ?", (int(box[5]) - 1, box[0])
            )
        return {int(r[0]) for r in rows}

    # --- message changes -----------------------------------------------------------------

    async def store_flags(
        self, mailbox: str, uids: Iterable[int], mode: str, flags: Iterable[str]
    ) -> dict[int, frozenset[str]]:
        """``mode`` is ``+`` (add), ``-`` (remove) or ``""`` (replace); new flags by UID."""
        done, _ = await self.store_flags_ex(mailbox, uids, mode, flags)
        return {uid: flags for uid, (flags, _) in done.items()}

    async def store_flags_ex(
        self,
        mailbox: str,
        uids: Iterable[int],
        mode: str,
        flags: Iterable[str],
        *,
        unchanged_since: int | None = None,
    ) -> tuple[dict[int, tuple[frozenset[str], int]], list[int]]:
        """Like :meth:`store_flags`, with modseqs and RFC 7162 ``UNCHANGEDSINCE``.

        Returns ({uid: (flags, modseq)} for every entry stored or left as it was, [UIDs not
        touched because their modseq is above ``unchanged_since``]).
        """
        change = normalize_flags(flags)
        wanted = set(uids)
        result: dict[int, tuple[frozenset[str], int]] = {}
        modified: list[int] = []
        updates: list[tuple[str, int, int, int]] = []
        if not wanted:
            return result, modified
        async with self._lock, self._tx():
            box = await self._mailbox_row(mailbox)
            rows = await self._all(
                "SELECT uid, flags, modseq FROM messages "
                "WHERE mailbox_id = ? AND uid BETWEEN ? AND ?",
                (box[0], min(wanted), max(wanted)),
            )
            modseq = int(box[6]) + 1  # one new modseq for this whole operation
            for uid, text, old_modseq in rows:
                if uid not in wanted:
                    continue
                if unchanged_since is not None and old_modseq > unchanged_since:
                    modified.append(int(uid))
                    continue
                old = _split_flags(text)
                new = old | change if mode == "+" else old - change if mode == "-" else change
                if new == old:
                    result[int(uid)] = (old, int(old_modseq))
                    continue
                result[int(uid)] = (new, modseq)
                updates.append((" ".join(sorted(new)), modseq, box[0], int(uid)))
            if updates:
                await self._db.executemany(
                    "UPDATE messages SET flags = ?, modseq = ? WHERE mailbox_id = ? AND uid = ?",
                    updates,
                )
                await self._db.execute(
                    "UPDATE mailboxes SET modseq = ? WHERE id = ?", (modseq, box[0])
                )
        if updates:
            self._notify_change(box[1])
        return result, modified

    async def entries(self, mailbox: str) -> tuple[list[tuple[int, frozenset[str], int]], int]:
        """Every (uid, flags, modseq) in UID order and the mailbox's highest modseq."""
        async with self._lock:
            box = await self._mailbox_row(mailbox)
            rows = await self._all(
                "SELECT uid, flags, modseq FROM messages WHERE mailbox_id = ? ORDER BY uid",
                (box[0],),
            )
        return [(int(u), _split_flags(f), int(m)) for u, f, m in rows], int(box[6])

    async def copy(self, source: str, uids: Iterable[int], target: str) -> list[tuple[int, int]]:
        """Copy entries (sharing bodies); returns (source UID, new UID) pairs in UID order."""
        pairs, target_name = await self._copy(source, sorted(set(uids)), target, remove=False)
        self._notify_new([(target_name, new) for _, new in pairs])
        return pairs

    async def move(self, source: str, uids: Iterable[int], target: str) -> list[tuple[int, int]]:
        """Atomically copy then remove from ``source`` (RFC 6851 MOVE)."""
        pairs, target_name = await self._copy(source, sorted(set(uids)), target, remove=True)
        if pairs:
            self._notify_change(normalize_mailbox(source))
        self._notify_new([(target_name, new) for _, new in pairs])
        return pairs

    async def _copy(
        self, source: str, uids: list[int], target: str, *, remove: bool
    ) -> tuple[list[tuple[int, int]], str]:
        pairs: list[tuple[int, int]] = []
        async with self._lock, self._tx():
            src = await self._mailbox_row(source)
            dst = await self._mailbox_row(target)
            if not uids:
                return pairs, dst[1]
            wanted = set(uids)
            rows = await self._all(
                "SELECT uid, body_id, flags, internal_date, internal_tz FROM messages "
                "WHERE mailbox_id = ? AND uid BETWEEN ? AND ? ORDER BY uid",
                (src[0], uids[0], uids[-1]),
            )
            for uid, body_id, flags, stamp, tz in rows:
                if uid not in wanted:
                    continue
                new_uid, _ = await self._add_entry(dst, body_id, _split_flags(flags), stamp, tz)
                pairs.append((int(uid), new_uid))
            if remove and pairs:
                await self._delete_entries(src[0], [p[0] for p in pairs])
        return pairs, dst[1]

    async def _delete_entries(self, mailbox_id: int, uids: list[int]) -> None:
        await self._db.executemany(
            "DELETE FROM messages WHERE mailbox_id = ? AND uid = ?",
            [(mailbox_id, uid) for uid in uids],
        )
        await self._db.execute(
            "UPDATE mailboxes SET modseq = modseq + 1 WHERE id = ?", (mailbox_id,)
        )
        await self._gc_bodies()

    async def _gc_bodies(self) -> None:
        await self._db.execute(
            "DELETE FROM bodies WHERE NOT EXISTS "
            "(SELECT 1 FROM messages m WHERE m.body_id = bodies.id)"
        )

    async def expunge(self, mailbox: str, uids: Iterable[int] | None = None) -> list[int]:
        """Remove entries flagged \\Deleted (only among ``uids`` when given); UIDs removed."""
        limit = None if uids is None else set(uids)
        async with self._lock, self._tx():
            box = await self._mailbox_row(mailbox)
            rows = await self._all(
                "SELECT uid FROM messages WHERE mailbox_id = ? AND "
                "(' ' || flags || ' ') LIKE '% \\Deleted %' ORDER BY uid",
                (box[0],),
            )
            gone = [int(r[0]) for r in rows if limit is None or r[0] in limit]
            if gone:
                await self._delete_entries(box[0], gone)
        if gone:
            self._notify_change(box[1])
        return gone

    async def integrity_check(self) -> str:
        async with self._lock:
            row = await self._one("PRAGMA integrity_check")
        return str(row[0])


def _deliver_batch(
    conn: sqlite3.Connection, items: list[PendingDelivery]
) -> list[tuple[str, int] | BaseException | None]:
    """The store's group commit: ``items`` inside one transaction on the writer thread."""
    return [MailboxNotFound(f"no mailbox named {r.mailbox!r}") if isinstance(r, Missing)
            else r for r in deliver_rows(conn, items)]  # fmt: skip
