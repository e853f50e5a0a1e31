"""The node's contact list, one per node, shared by chat, calls and mail.

A contact is a node key with an alias the person chose, a trust level and notes:

* ``trusted`` — the person added it (``mesh contacts add``, ``contacts.add``);
* ``unknown`` — it only appeared because it sent something (a chat message request, an
  incoming call): :meth:`Contacts.seen`;
* ``blocked`` — the person blocked it; apps refuse it.

Contacts are named by alias (case-insensitive), by the 64-hex key, by ``key@mesh``, or by
a unique prefix of the key in hex (at least :data:`MIN_PREFIX` characters). A name that
fits more than one contact raises :class:`AmbiguousContact` listing them.

Aliases: 1 to :data:`MAX_ALIAS` characters, printable, no leading or trailing space, no
``@`` (it would read as ``key@mesh``), not 64 hex characters (it would read as a key),
unique ignoring case.

Stored in ``contacts.db`` in the data directory (:class:`core.db.AppDatabase`); every
change is committed before it returns and then published as ``contact.added``,
``contact.changed`` or ``contact.removed`` with the contact's JSON. Reads are served from
memory (the whole list is loaded at open). Unknown contacts are bounded: past
:data:`MAX_UNKNOWN`, :meth:`Contacts.seen` forgets the oldest unknown one.
"""

from __future__ import annotations

import asyncio
import enum
import sqlite3
import string
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from core.address import KEY_SIZE
from core.db import AppDatabase
from core.errors import UsageError
from core.mailaddr import MailAddress, parse_mail_address
from core.types import EventSink, NodeEvent

__all__ = [
    "CONTACTS_FILE_NAME",
    "AmbiguousContact",
    "Contact",
    "Contacts",
    "Trust",
    "UnknownContact",
    "contact_methods",
    "parse_key",
    "validate_alias",
]

CONTACTS_FILE_NAME = "contacts.db"
MAX_ALIAS = 64
MAX_NOTES = 4096
MIN_PREFIX = 8
MAX_UNKNOWN = 10_000
_HEX = frozenset(string.hexdigits)

MIGRATIONS: Mapping[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE contacts (
            key BLOB PRIMARY KEY CHECK (length(key) = 32),
            alias TEXT,
            alias_fold TEXT UNIQUE,
            trust TEXT NOT NULL CHECK (trust IN ('unknown', 'trusted', 'blocked')),
            added REAL NOT NULL,
            notes TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX contacts_unknown ON contacts (trust, added)",
    ),
}


class Trust(enum.StrEnum):
    UNKNOWN = "unknown"
    TRUSTED = "trusted"
    BLOCKED = "blocked"


class UnknownContact(UsageError):
    """No contact has that alias, key or key@mesh."""


class AmbiguousContact(UsageError):
    """A name fits several contacts; the message lists them."""

    def __init__(self, name: str, matches: list[Contact]) -> None:
        self.matches = matches
        listed = "; ".join(f"{c.alias or '(no alias)'} {c.key.hex()}" for c in matches)
        super().__init__(
            f"{name!r} could be {len(matches)} contacts: {listed}; name one by its full key"
        )


@dataclass(frozen=True, slots=True)
class Contact:
    key: bytes
    alias: str | None
    trust: Trust
    added: float
    notes: str = ""

    @property
    def mail_address(self) -> str:
        return str(MailAddress(self.key))

    @property
    def label(self) -> str:
        """The alias, else the start of the key (for lines people read)."""
        return self.alias or self.key.hex()[:16]

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key.hex(),
            "alias": self.alias,
            "trust": self.trust.value,
            "added": self.added,
            "notes": self.notes,
            "address": self.mail_address,
        }


def parse_key(text: str) -> bytes:
    """A node key from 64 hex characters or ``key@mesh``; :class:`UsageError` otherwise."""
    value = str(text).strip()
    if "@" in value:
        return parse_mail_address(value).key
    if len(value) != KEY_SIZE * 2 or not set(value) <= _HEX:
        raise UsageError(
            f"{text!r} is not a node key: expected {KEY_SIZE * 2} hex characters or "
            "<64 hex>@mesh (see `mesh status` on that node)"
        )
    return bytes.fromhex(value)


def validate_alias(alias: str) -> str:
    """The alias as stored, or :class:`UsageError` saying what is wrong with it."""
    if not isinstance(alias, str):
        raise UsageError("an alias is a string")
    if not alias or alias != alias.strip():
        raise UsageError(f"alias {alias!r}: not empty, no leading or trailing spaces")
    if len(alias) > MAX_ALIAS:
        raise UsageError(f"alias {alias[:20]!r}...: at most {MAX_ALIAS} characters")
    if not alias.isprintable():
        raise UsageError(f"alias {alias!r}: printable characters only")
    if "@" in alias:
        raise UsageError(f"alias {alias!r}: no '@' (it would read as key@mesh)")
    if len(alias) == KEY_SIZE * 2 and set(alias) <= _HEX:
        raise UsageError(f"alias {alias!r}: 64 hex characters would read as a key")
    return alias


def _fold(alias: str | None) -> str | None:
    return alias.casefold() if alias is not None else None


def _row(row: Any) -> Contact:
    return Contact(bytes(row[0]), row[1], Trust(row[2]), float(row[3]), str(row[4]))


class Contacts:
    """``contacts = await Contacts.open(path, events=node.events.publish)``; ``close()``."""

    def __init__(self, db: AppDatabase, rows: list[Contact], events: EventSink | None) -> None:
        self._db = db
        self._events = events
        self._by_key: dict[bytes, Contact] = {c.key: c for c in rows}
        self._write = asyncio.Lock()  # one change at a time: the cache follows the file

    @classmethod
    async def open(cls, path: Path, *, events: EventSink | None = None) -> Contacts:
        db = await AppDatabase.open(path, MIGRATIONS, what=path.name, name="contacts")
        try:
            sql = "SELECT key, alias, trust, added, notes FROM contacts ORDER BY added"
            async with db.conn.execute(sql) as cur:
                rows = [_row(r) for r in await cur.fetchall()]
        except BaseException:
            await db.close()
            raise
        return cls(db, rows, events)

    async def close(self) -> None:
        await self._db.close()

    # -- reads --------------------------------------------------------------------------
    async def get(self, key: bytes) -> Contact | None:
        return self._by_key.get(bytes(key))

    async def list(self) -> list[Contact]:
        """Every contact: aliased ones by alias, then the rest by when they were added."""
        return sorted(
            self._by_key.values(), key=lambda c: (c.alias is None, _fold(c.alias) or "", c.added)
        )

    def __len__(self) -> int:
        return len(self._by_key)

    async def resolve(self, name: str) -> Contact:
        """The one contact ``name`` means: alias, key, ``key@mesh`` or a key prefix."""
        text = str(name).strip()
        if not text:
            raise UsageError("name a contact by alias, key or key@mesh")
        if "@" in text or (len(text) == KEY_SIZE * 2 and set(text) <= _HEX):
            key = parse_key(text)
            found = self._by_key.get(key)
            if found is None:
                raise UnknownContact(f"no contact has the key {key.hex()} (mesh contacts add)")
            return found
        fold = text.casefold()
        matches = [c for c in self._by_key.values() if _fold(c.alias) == fold]
        if len(text) >= MIN_PREFIX and set(text) <= _HEX:
            prefix = text.lower()
            hits = [c for c in self._by_key.values() if c.key.hex().startswith(prefix)]
            matches += [c for c in hits if c not in matches]
        if not matches:
            raise UnknownContact(f"no contact is called {text!r}; `mesh contacts list` shows them")
        if len(matches) > 1:
            raise AmbiguousContact(text, matches)
        return matches[0]

    # -- changes --------------------------------------------------------------------------
    async def add(
        self, key: bytes, alias: str | None = None, trust: Trust = Trust.TRUSTED
    ) -> Contact:
        """Add ``key`` (trusted: the person added it), or, if known, set its trust and
        (when given) its alias."""
        key = _check_key(key)
        alias = validate_alias(alias) if alias is not None else None
        async with self._write:
            old = self._by_key.get(key)
            if old is None:
                new = Contact(key, alias, Trust(trust), time.time())
            else:
                new = replace(old, trust=Trust(trust), alias=alias if alias else old.alias)
            self._check_alias_free(new.alias, key)
            await self._store(new)
        self._publish("contact.added" if old is None else "contact.changed", new)
        return new

    async def seen(self, key: bytes) -> Contact:
        """The contact for ``key``, added as ``unknown`` if it was not one (someone who
        sent a message request or called)."""
        key = _check_key(key)
        found = self._by_key.get(key)
        if found is not None:
            return found
        async with self._write:
            found = self._by_key.get(key)
            if found is not None:
                return found
            new = Contact(key, None, Trust.UNKNOWN, time.time())
            unknown = [c for c in self._by_key.values() if c.trust is Trust.UNKNOWN]
            evicted = min(unknown, key=lambda c: c.added) if len(unknown) >= MAX_UNKNOWN else None

            def write(conn: sqlite3.Connection) -> None:
                if evicted is not None:
                    conn.execute("DELETE FROM contacts WHERE key = ?", (evicted.key,))
                _insert(conn, new)

            await self._db.transaction(write)
            if evicted is not None:
                del self._by_key[evicted.key]
            self._by_key[key] = new
        if evicted is not None:
            self._publish("contact.removed", evicted)
        self._publish("contact.added", new)
        return new

    async def rename(self, key: bytes, alias: str | None) -> Contact:
        """Set (or, with None, clear) the alias."""
        alias = validate_alias(alias) if alias is not None else None
        return await self._change(key, lambda c: replace(c, alias=alias))

    async def set_trust(self, key: bytes, trust: Trust) -> Contact:
        return await self._change(key, lambda c: replace(c, trust=Trust(trust)))

    async def set_notes(self, key: bytes, notes: str) -> Contact:
        if len(notes) > MAX_NOTES:
            raise UsageError(f"notes: at most {MAX_NOTES} characters")
        return await self._change(key, lambda c: replace(c, notes=notes))

    async def block(self, key: bytes) -> Contact:
        """Block ``key``, adding it (as blocked) if it was not a contact."""
        key = _check_key(key)
        if key not in self._by_key:
            return await self.add(key, trust=Trust.BLOCKED)
        return await self.set_trust(key, Trust.BLOCKED)

    async def remove(self, key: bytes) -> Contact:
        key = _check_key(key)
        async with self._write:
            old = self._by_key.get(key)
            if old is None:
                raise UnknownContact(f"no contact has the key {key.hex()}")
            await self._db.transaction(
                lambda conn: conn.execute("DELETE FROM contacts WHERE key = ?", (key,))
            )
            del self._by_key[key]
        self._publish("contact.removed", old)
        return old

    # -- internals --------------------------------------------------------------------------
    async def _change(self, key: bytes, change: Callable[[Contact], Contact]) -> Contact:
        key = _check_key(key)
        async with self._write:
            old = self._by_key.get(key)
            if old is None:
                raise UnknownContact(f"no contact has the key {key.hex()} (mesh contacts add)")
            new = change(old)
            if new == old:
                return old
            self._check_alias_free(new.alias, key)
            await self._store(new)
        self._publish("contact.changed", new)
        return new

    def _check_alias_free(self, alias: str | None, key: bytes) -> None:
        fold = _fold(alias)
        if fold is None:
            return
        for other in self._by_key.values():
            if other.key != key and _fold(other.alias) == fold:
                raise UsageError(
                    f"alias {alias!r} is already {other.key.hex()[:16]}…'s; choose another"
                )

    async def _store(self, contact: Contact) -> None:
        """Insert or replace ``contact`` (caller holds ``_write``), then the cache."""
        await self._db.transaction(lambda conn: _insert(conn, contact, replace=True))
        self._by_key[contact.key] = contact

    def _publish(self, kind: str, contact: Contact) -> None:
        if self._events is not None:
            self._events(NodeEvent(kind, contact.to_json()))


def _insert(conn: sqlite3.Connection, c: Contact, *, replace: bool = False) -> None:
    verb = "INSERT OR REPLACE" if replace else "INSERT"
    conn.execute(
        f"{verb} INTO contacts (key, alias, alias_fold, trust, added, notes) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (c.key, c.alias, _fold(c.alias), c.trust.value, c.added, c.notes),
    )


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
        raise UsageError(f"a node key is {KEY_SIZE} bytes")
    return bytes(key)


Handler = Callable[[dict[str, Any]], Awaitable[Any]]


def contact_methods(contacts: Contacts) -> dict[str, Handler]:
    """The ``contacts.*`` control methods (registered by the node process)."""

    async def named(params: dict[str, Any]) -> Contact:
        return await contacts.resolve(str(params["contact"]))

    async def list_(params: dict[str, Any]) -> list[dict[str, Any]]:
        return [c.to_json() for c in await contacts.list()]

    async def add(params: dict[str, Any]) -> dict[str, Any]:
        key = parse_key(str(params["key"]))
        alias = params.get("alias")
        return (await contacts.add(key, None if alias is None else str(alias))).to_json()

    async def rename(params: dict[str, Any]) -> dict[str, Any]:
        alias = params.get("alias")
        contact = await named(params)
        return (await contacts.rename(contact.key, None if alias is None else str(alias))).to_json()

    async def block(params: dict[str, Any]) -> dict[str, Any]:
        text = str(params["contact"])
        try:
            key = (await contacts.resolve(text)).key
        except UnknownContact:
            try:
                key = parse_key(text)  # blocking a stranger by key adds them, blocked
            except UsageError:
                raise UnknownContact(
                    f"no contact is called {text!r}, and it is not a key to block"
                ) from None
        return (await contacts.block(key)).to_json()

    async def unblock(params: dict[str, Any]) -> dict[str, Any]:
        contact = await named(params)
        return (await contacts.set_trust(contact.key, Trust.TRUSTED)).to_json()

    async def remove(params: dict[str, Any]) -> dict[str, Any]:
        return (await contacts.remove((await named(params)).key)).to_json()

    async def resolve(params: dict[str, Any]) -> dict[str, Any]:
        return (await named(params)).to_json()

    async def notes(params: dict[str, Any]) -> dict[str, Any]:
        contact = await named(params)
        return (await contacts.set_notes(contact.key, str(params["notes"]))).to_json()

    return {
        "contacts.list": list_,
        "contacts.add": add,
        "contacts.rename": rename,
        "contacts.block": block,
        "contacts.unblock": unblock,
        "contacts.remove": remove,
        "contacts.resolve": resolve,
        "contacts.notes": notes,
    }
