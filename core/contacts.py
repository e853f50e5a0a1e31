"""The node's contact list, one per node, shared by chat, calls and mail.

A contact is a node key with an alias the person chose, a trust level and notes:

* ``trusted`` — the person added it (``mesh contacts add``, ``contacts.add``);
* ``unknown`` — it only appeared because it sent something (a chat message request, an
  incoming call): :meth:`Contacts.seen`;
* ``blocked`` — the person blocked it; apps refuse it.

Contacts are named by alias (case-insensitive), by the 64-hex key, by ``key@mesh``, or by
a unique prefix of the key in hex (at least :data:`MIN_PREFIX` characters). A name that
fits more than one contact raises :class:`AmbiguousContact` listing them.

Aliases are stored in Unicode NFKC form (a fullwidth "Bob" is stored as ``Bob``): 1 to
:data:`MAX_ALIAS` characters, printable, no leading or trailing space, no ``@`` (it would
read as ``key@mesh``), not 64 hex characters (it would read as a key), letters of at most
one of the Latin, Greek and Cyrillic scripts ("bob" with a Greek omicron is refused).
Unique ignoring case and look-alikes: an alias whose :func:`alias_skeleton` (NFKC, Greek
and Cyrillic look-alikes of Latin letters taken as those letters, casefolded) is another
contact's is refused, so "BOB" in Cyrillic letters cannot sit beside ``bob``.

A node cannot be its own contact: :meth:`Contacts.add` refuses :attr:`Contacts.own_key`.

Stored in ``contacts.db`` in the data directory (:class:`core.db.AppDatabase`); every
change is committed before it returns and then published as ``contact.added``,
``contact.changed`` or ``contact.removed`` with the contact's JSON. Reads are served from
memory (the whole list is loaded at open). Unknown contacts are bounded: past
:data:`MAX_UNKNOWN`, :meth:`Contacts.seen` forgets the oldest unknown one.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import sqlite3
import string
import time
import unicodedata
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
    "OwnKey",
    "Trust",
    "UnknownContact",
    "alias_skeleton",
    "contact_methods",
    "parse_key",
    "validate_alias",
]

log = logging.getLogger(__name__)

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


class OwnKey(UsageError):
    """The node's own key was given where another node's is wanted."""


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
    """The alias as stored (NFKC), or :class:`UsageError` saying what is wrong with it."""
    if not isinstance(alias, str):
        raise UsageError("an alias is a string")
    given = alias
    alias = unicodedata.normalize("NFKC", alias)
    if not alias or alias != alias.strip():
        raise UsageError(f"alias {given!r}: not empty, no leading or trailing spaces")
    if len(alias) > MAX_ALIAS:
        raise UsageError(f"alias {alias[:20]!r}...: at most {MAX_ALIAS} characters")
    if not alias.isprintable():
        raise UsageError(f"alias {given!r}: printable characters only")
    if "@" in alias:
        raise UsageError(f"alias {given!r}: no '@' (it would read as key@mesh)")
    if len(alias) == KEY_SIZE * 2 and set(alias) <= _HEX:
        raise UsageError(f"alias {given!r}: 64 hex characters would read as a key")
    scripts = sorted({s for s in map(_script, alias) if s is not None})
    if len(scripts) > 1:
        raise UsageError(
            f"alias {given!r} mixes {' and '.join(scripts)} letters, which can pass for "
            "another name; write it in one of them"
        )
    return alias


# Scripts whose letters pass for one another (UTS #39 "moderately restrictive" forbids
# mixing Latin with Greek or Cyrillic), and the Greek and Cyrillic letters that look like
# Latin ones (a subset of the Unicode confusables table: the ones that are look-alikes in
# ordinary fonts).
_CONFUSABLE_SCRIPTS = ("LATIN", "GREEK", "CYRILLIC")
_LOOKALIKE = str.maketrans(
    {
        "\u0410": "A",  # cyrillic capital letter a
        "\u0412": "B",  # cyrillic capital letter ve
        "\u0415": "E",  # cyrillic capital letter ie
        "\u041a": "K",  # cyrillic capital letter ka
        "\u041c": "M",  # cyrillic capital letter em
        "\u041d": "H",  # cyrillic capital letter en
        "\u041e": "O",  # cyrillic capital letter o
        "\u0420": "P",  # cyrillic capital letter er
        "\u0421": "C",  # cyrillic capital letter es
        "\u0422": "T",  # cyrillic capital letter te
        "\u0425": "X",  # cyrillic capital letter ha
        "\u0423": "Y",  # cyrillic capital letter u
        "\u0405": "S",  # cyrillic capital letter dze
        "\u0406": "I",  # cyrillic capital letter byelorussian-ukrainian i
        "\u0408": "J",  # cyrillic capital letter je
        "\u04ae": "Y",  # cyrillic capital letter straight u
        "\u051a": "Q",  # cyrillic capital letter qa
        "\u051c": "W",  # cyrillic capital letter we
        "\u0430": "a",  # cyrillic small letter a
        "\u0435": "e",  # cyrillic small letter ie
        "\u043e": "o",  # cyrillic small letter o
        "\u0440": "p",  # cyrillic small letter er
        "\u0441": "c",  # cyrillic small letter es
        "\u0443": "y",  # cyrillic small letter u
        "\u0445": "x",  # cyrillic small letter ha
        "\u0455": "s",  # cyrillic small letter dze
        "\u0456": "i",  # cyrillic small letter byelorussian-ukrainian i
        "\u0458": "j",  # cyrillic small letter je
        "\u04bb": "h",  # cyrillic small letter shha
        "\u051b": "q",  # cyrillic small letter qa
        "\u051d": "w",  # cyrillic small letter we
        "\u04af": "y",  # cyrillic small letter straight u
        "\u04cf": "l",  # cyrillic small letter palochka
        "\u0391": "A",  # greek capital letter alpha
        "\u0392": "B",  # greek capital letter beta
        "\u0395": "E",  # greek capital letter epsilon
        "\u0396": "Z",  # greek capital letter zeta
        "\u0397": "H",  # greek capital letter eta
        "\u0399": "I",  # greek capital letter iota
        "\u039a": "K",  # greek capital letter kappa
        "\u039c": "M",  # greek capital letter mu
        "\u039d": "N",  # greek capital letter nu
        "\u039f": "O",  # greek capital letter omicron
        "\u03a1": "P",  # greek capital letter rho
        "\u03a4": "T",  # greek capital letter tau
        "\u03a5": "Y",  # greek capital letter upsilon
        "\u03a7": "X",  # greek capital letter chi
        "\u03bf": "o",  # greek small letter omicron
        "\u03b1": "a",  # greek small letter alpha
        "\u03c1": "p",  # greek small letter rho
        "\u03b9": "i",  # greek small letter iota
        "\u03bd": "v",  # greek small letter nu
        "\u03c5": "u",  # greek small letter upsilon
        "\u03ba": "k",  # greek small letter kappa
        "\u03c7": "x",  # greek small letter chi
        "\u03f3": "j",  # greek letter yot
        "\u0131": "i",  # latin small letter dotless i
    }
)


def _script(char: str) -> str | None:
    """LATIN, GREEK or CYRILLIC for a letter of those scripts, else None."""
    if not char.isalpha():
        return None
    name = unicodedata.name(char, "")
    return next((s.title() for s in _CONFUSABLE_SCRIPTS if name.startswith(s + " ")), None)


def alias_skeleton(alias: str) -> str:
    """What an alias looks like: two aliases with one skeleton are confusable (equal
    ignoring case, NFKC compatibility forms and Greek/Cyrillic look-alikes of Latin)."""
    text = unicodedata.normalize("NFKC", alias).translate(_LOOKALIKE)
    return unicodedata.normalize("NFKC", text.casefold())


def _fold(alias: str | None) -> str | None:
    return alias_skeleton(alias) if alias is not None else None


def _row(row: Any) -> Contact:
    return Contact(bytes(row[0]), row[1], Trust(row[2]), float(row[3]), str(row[4]))


class Contacts:
    """``contacts = await Contacts.open(path, events=node.events.publish)``; ``close()``.

    ``own_key``: this node's key, which :meth:`add` and :meth:`block` refuse (the node
    sets it once its backend has started)."""

    def __init__(
        self,
        db: AppDatabase,
        rows: list[Contact],
        events: EventSink | None,
        own_key: bytes | None = None,
    ) -> None:
        self._db = db
        self._events = events
        self.own_key = own_key
        self._by_key: dict[bytes, Contact] = {c.key: c for c in rows}
        self._write = asyncio.Lock()  # one change at a time: the cache follows the file

    @classmethod
    async def open(
        cls, path: Path, *, events: EventSink | None = None, own_key: bytes | None = None
    ) -> Contacts:
        db = await AppDatabase.open(path, MIGRATIONS, what=path.name, name="contacts")
        try:
            sql = "SELECT key, alias, trust, added, notes, alias_fold FROM contacts ORDER BY added"
            async with db.conn.execute(sql) as cur:
                found = list(await cur.fetchall())
            rows = [_row(r) for r in found]
            if any(r[5] != _fold(c.alias) for r, c in zip(found, rows, strict=True)):
                rows = await _refold(db, rows)
        except BaseException:
            await db.close()
            raise
        return cls(db, rows, events, own_key)

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
        fold = alias_skeleton(text)
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
        if self.own_key is not None and key == self.own_key:
            raise OwnKey(f"{key.hex()} is this node's own key; a contact is another node")
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
        """Block ``key``, adding it (as blocked) if it was not a contact (never this
        node's own key: :class:`OwnKey`)."""
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
                like = "" if other.alias == alias else f" (as {other.alias!r}, a look-alike)"
                raise UsageError(
                    f"alias {alias!r} is already {other.key.hex()[:16]}…'s{like}; choose another"
                )

    async def _store(self, contact: Contact) -> None:
        """Insert or replace ``contact`` (caller holds ``_write``), then the cache."""
        await self._db.transaction(lambda conn: _insert(conn, contact, replace=True))
        self._by_key[contact.key] = contact

    def _publish(self, kind: str, contact: Contact) -> None:
        if self._events is not None:
            self._events(NodeEvent(kind, contact.to_json()))


def _insert(conn: sqlite3.Connection, c: Contact, *, replace: bool = False) -> None:
    # An upsert on the key, never INSERT OR REPLACE: that would delete another contact
    # whose alias_fold collided instead of failing.
    upsert = (
        " ON CONFLICT (key) DO UPDATE SET alias = excluded.alias, alias_fold = "
        "excluded.alias_fold, trust = excluded.trust, added = excluded.added, "
        "notes = excluded.notes"
    )
    conn.execute(
        "INSERT INTO contacts (key, alias, alias_fold, trust, added, notes) "
        "VALUES (?, ?, ?, ?, ?, ?)" + (upsert if replace else ""),
        (c.key, c.alias, _fold(c.alias), c.trust.value, c.added, c.notes),
    )


async def _refold(db: AppDatabase, rows: list[Contact]) -> list[Contact]:
    """Bring ``alias_fold`` to :func:`alias_skeleton` (a list written when aliases were
    only casefolded). Of aliases that are now look-alikes, the earliest added keeps its
    alias; the later ones lose theirs (logged), so that no two contacts pass for each
    other. ``rows`` is in the order added."""
    taken: set[str] = set()
    kept: list[Contact] = []
    for contact in rows:
        fold = _fold(contact.alias)
        if fold is not None and fold in taken:
            log.warning(
                "contacts: %s's alias %r looks like another contact's; it now has none",
                contact.key.hex(),
                contact.alias,
            )
            contact = replace(contact, alias=None)
        elif fold is not None:
            taken.add(fold)
        kept.append(contact)

    def write(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE contacts SET alias_fold = NULL")
        conn.executemany(
            "UPDATE contacts SET alias = ?, alias_fold = ? WHERE key = ?",
            [(c.alias, _fold(c.alias), c.key) for c in kept],
        )

    await db.transaction(write)
    return kept


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
