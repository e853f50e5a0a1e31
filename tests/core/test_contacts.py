"""core.contacts: one contact list per node (alias, key, trust), durable, with events."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from core.contacts import (
    MAX_ALIAS,
    AmbiguousContact,
    Contact,
    Contacts,
    OwnKey,
    Trust,
    UnknownContact,
    contact_methods,
    parse_key,
    validate_alias,
)
from core.errors import UsageError
from core.testing import mem_mesh
from core.types import NodeEvent

pytestmark = pytest.mark.timeout(30)


def key(n: int) -> bytes:
    return bytes([n]) * 32


@pytest.fixture
async def book(tmp_path: Path):  # type: ignore[no-untyped-def]
    events: list[NodeEvent] = []
    contacts = await Contacts.open(tmp_path / "contacts.db", events=events.append)
    contacts.events = events  # type: ignore[attr-defined]
    yield contacts
    await contacts.close()


async def test_a_contact_the_person_adds_is_trusted_and_survives_a_reopen(tmp_path: Path) -> None:
    contacts = await Contacts.open(tmp_path / "contacts.db")
    added = await contacts.add(key(1), alias="alice")
    assert added.trust is Trust.TRUSTED and added.alias == "alice"
    await contacts.close()
    again = await Contacts.open(tmp_path / "contacts.db")
    try:
        assert await again.get(key(1)) == added
        assert oct((tmp_path / "contacts.db").stat().st_mode & 0o777) == "0o600"
    finally:
        await again.close()


async def test_seen_adds_an_unknown_contact_once_and_keeps_a_known_one(book: Contacts) -> None:
    first = await book.seen(key(2))
    assert first.trust is Trust.UNKNOWN and first.alias is None
    assert await book.seen(key(2)) == first
    await book.add(key(3), alias="bob")
    assert (await book.seen(key(3))).trust is Trust.TRUSTED
    kinds = [e.kind for e in book.events]  # type: ignore[attr-defined]
    assert kinds == ["contact.added", "contact.added"]


async def test_resolve_by_alias_key_key_at_mesh_and_prefix(book: Contacts) -> None:
    alice = await book.add(key(1), alias="Alice")
    assert await book.resolve("alice") == alice  # aliases ignore case
    assert await book.resolve(key(1).hex()) == alice
    assert await book.resolve(f"{key(1).hex().upper()}@mesh") == alice
    assert await book.resolve(key(1).hex()[:8]) == alice
    with pytest.raises(UnknownContact, match="no contact"):
        await book.resolve("carol")
    with pytest.raises(UnknownContact):
        await book.resolve(key(9).hex())


async def test_an_ambiguous_name_is_an_error_listing_the_matches(book: Contacts) -> None:
    a = bytes.fromhex("cafe0000" + "11" * 28)
    b = bytes.fromhex("cafe0000" + "22" * 28)
    await book.add(a, alias="one")
    await book.add(b, alias="two")
    with pytest.raises(AmbiguousContact) as err:
        await book.resolve("cafe0000")
    assert a.hex() in str(err.value) and b.hex() in str(err.value)
    assert {c.key for c in err.value.matches} == {a, b}
    # an alias that is also another contact's key prefix is ambiguous too
    await book.add(key(5), alias="cafe0000")
    with pytest.raises(AmbiguousContact):
        await book.resolve("cafe0000")
    assert (await book.resolve("cafe0000" + "11")).key == a


@pytest.mark.parametrize(
    "alias",
    ["", " bob", "bob ", "a\tb", "x\n", "bob@mesh", "a" * (MAX_ALIAS + 1), "ab" * 32],
)
def test_bad_aliases_are_refused_saying_why(alias: str) -> None:
    with pytest.raises(UsageError, match="alias"):
        validate_alias(alias)


async def test_aliases_are_unique_ignoring_case(book: Contacts) -> None:
    await book.add(key(1), alias="alice")
    with pytest.raises(UsageError, match="already"):
        await book.add(key(2), alias="ALICE")
    assert await book.get(key(2)) is None  # nothing changed
    await book.add(key(2), alias="bob")
    with pytest.raises(UsageError, match="already"):
        await book.rename(key(2), "Alice")
    assert (await book.get(key(2))).alias == "bob"  # type: ignore[union-attr]


@pytest.mark.parametrize("text", ["", "abc", "zz" * 32, "ab" * 31, "ab" * 33, "ab" * 32 + "@web"])
def test_parse_key_refuses_malformed_keys(text: str) -> None:
    with pytest.raises(UsageError):
        parse_key(text)


def test_parse_key_takes_hex_and_key_at_mesh() -> None:
    assert parse_key(key(7).hex()) == key(7)
    assert parse_key(f"{key(7).hex()}@mesh") == key(7)


async def test_block_unblock_rename_remove_publish_events(book: Contacts) -> None:
    await book.add(key(1), alias="alice")
    await book.block(key(1))
    assert (await book.get(key(1))).trust is Trust.BLOCKED  # type: ignore[union-attr]
    await book.set_trust(key(1), Trust.TRUSTED)
    await book.rename(key(1), "al")
    removed = await book.remove(key(1))
    assert removed.alias == "al" and await book.get(key(1)) is None
    events = book.events  # type: ignore[attr-defined]
    assert [e.kind for e in events] == [
        "contact.added", "contact.changed", "contact.changed", "contact.changed",
        "contact.removed",
    ]  # fmt: skip
    assert events[0].data == {
        "key": key(1).hex(), "alias": "alice", "trust": "trusted",
        "added": events[0].data["added"], "notes": "", "address": f"{key(1).hex()}@mesh",
    }  # fmt: skip
    with pytest.raises(UnknownContact):
        await book.remove(key(1))


async def test_blocking_a_stranger_adds_it_blocked(book: Contacts) -> None:
    contact = await book.block(key(4))
    assert contact.trust is Trust.BLOCKED
    assert (await book.seen(key(4))).trust is Trust.BLOCKED


async def test_unknown_contacts_are_bounded_oldest_forgotten(
    book: Contacts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("core.contacts.MAX_UNKNOWN", 3)
    await book.add(key(100), alias="friend")
    for n in range(5):
        await book.seen(key(n))
    unknown = [c for c in await book.list() if c.trust is Trust.UNKNOWN]
    assert {c.key for c in unknown} == {key(2), key(3), key(4)}
    assert await book.get(key(100)) is not None  # trusted ones are never evicted


async def test_list_puts_aliased_contacts_first_by_alias(book: Contacts) -> None:
    await book.seen(key(9))
    await book.add(key(2), alias="zed")
    await book.add(key(3), alias="Amy")
    assert [c.alias for c in await book.list()] == ["Amy", "zed", None]


async def test_control_methods_resolve_names_and_refuse_bad_input(book: Contacts) -> None:
    m = contact_methods(book)
    added = await m["contacts.add"]({"key": f"{key(1).hex()}@mesh", "alias": "alice"})
    assert added["trust"] == "trusted" and added["alias"] == "alice"
    assert (await m["contacts.block"]({"contact": "alice"}))["trust"] == "blocked"
    assert (await m["contacts.unblock"]({"contact": "alice"}))["trust"] == "trusted"
    assert (await m["contacts.rename"]({"contact": "alice", "alias": "al"}))["alias"] == "al"
    assert (await m["contacts.resolve"]({"contact": "AL"}))["key"] == key(1).hex()
    assert [c["alias"] for c in await m["contacts.list"]({})] == ["al"]
    with pytest.raises(UsageError):
        await m["contacts.add"]({"key": "not-a-key"})
    with pytest.raises(UnknownContact, match="not a key to block"):
        await m["contacts.block"]({"contact": "stranger"})
    stranger = await m["contacts.block"]({"contact": key(6).hex()})
    assert stranger["trust"] == "blocked" and stranger["alias"] is None
    await m["contacts.remove"]({"contact": key(6).hex()})
    assert len(await m["contacts.list"]({})) == 1
    assert (await m["contacts.remove"]({"contact": "al"}))["key"] == key(1).hex()
    assert await m["contacts.list"]({}) == []


async def test_concurrent_seen_of_one_key_adds_it_once(book: Contacts) -> None:
    import asyncio

    results = await asyncio.gather(*(book.seen(key(8)) for _ in range(20)))
    assert len({r.added for r in results}) == 1
    assert [e.kind for e in book.events] == ["contact.added"]  # type: ignore[attr-defined]


def test_contact_json_names_the_mail_address() -> None:
    c = Contact(os.urandom(32), None, Trust.UNKNOWN, 1.0)
    assert c.to_json()["address"] == f"{c.key.hex()}@mesh" == c.mail_address


async def test_a_fullwidth_alias_is_stored_nfkc_and_collides_with_its_ascii_twin(
    book: Contacts,
) -> None:
    await book.add(key(1), alias="bob")
    with pytest.raises(UsageError, match="already"):
        await book.add(key(2), alias="\uff22\uff4f\uff42")  # fullwidth "Bob"
    assert await book.get(key(2)) is None
    carol = await book.add(key(3), alias="\uff43arol")  # fullwidth c
    assert carol.alias == "carol"
    assert await book.resolve("\uff23\uff21\uff32\uff2f\uff2c") == carol  # fullwidth CAROL


@pytest.mark.parametrize(
    "alias",
    [
        "b\u03bfb",  # Greek omicron between Latin b's
        "\u0430lice",  # Cyrillic a, Latin lice
        "\u0391\u0411",  # Greek Alpha, Cyrillic Be
    ],
)
def test_an_alias_mixing_latin_greek_or_cyrillic_letters_is_refused(alias: str) -> None:
    with pytest.raises(UsageError, match="mixes"):
        validate_alias(alias)


async def test_a_look_alike_of_another_contacts_alias_is_refused(book: Contacts) -> None:
    await book.add(key(1), alias="bob")
    await book.add(key(2), alias="Tom")
    for twin, other in (
        ("\u0412\u041e\u0412", key(3)),  # "BOB" in Cyrillic capitals
        ("\u03a4\u039f\u039c", key(4)),  # "TOM" in Greek capitals
    ):
        with pytest.raises(UsageError, match="look-alike"):
            await book.add(other, alias=twin)
        assert await book.get(other) is None
    await book.add(key(5), alias="robert")
    with pytest.raises(UsageError, match="look-alike"):
        await book.rename(key(5), "\u0412\u041e\u0412")  # Cyrillic "BOB" again, by rename
    assert (await book.get(key(5))).alias == "robert"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "alias", ["\u0411\u043e\u0440\u0438\u0441", "\u738b", "\u03a3\u03bf\u03c6\u03af\u03b1", "Zoë"]
)
async def test_real_non_latin_aliases_are_kept(book: Contacts, alias: str) -> None:
    await book.add(key(1), alias="bob")
    await book.add(key(2), alias="boris")
    added = await book.add(key(3), alias=alias)  # Boris in Cyrillic, wang in CJK, Sofia in Greek
    assert added.alias == alias
    assert await book.resolve(alias) == added


async def test_the_nodes_own_key_cannot_be_a_contact(tmp_path: Path) -> None:
    own = key(7)
    contacts = await Contacts.open(tmp_path / "contacts.db", own_key=own)
    try:
        with pytest.raises(OwnKey, match="own key"):
            await contacts.add(own, alias="me")
        with pytest.raises(OwnKey):
            await contacts.block(own)
        with pytest.raises(OwnKey):
            await contact_methods(contacts)["contacts.add"]({"key": own.hex()})
        assert await contacts.list() == []
    finally:
        await contacts.close()


async def test_a_running_node_refuses_its_own_key_as_a_contact(tmp_path: Path) -> None:
    async with mem_mesh(1, tmp_path) as (node,):
        with pytest.raises(OwnKey):
            await node.contacts.add(node.key)
        assert await node.contacts.list() == []


async def test_a_list_from_before_look_alike_folding_keeps_the_first_of_two_twins(
    tmp_path: Path,
) -> None:
    path = tmp_path / "contacts.db"
    contacts = await Contacts.open(path)
    await contacts.add(key(1), alias="bob")
    await contacts.add(key(3), alias="Eve")
    await contacts.close()
    with sqlite3.connect(path) as conn:  # as written when aliases were only casefolded
        conn.execute("UPDATE contacts SET alias_fold = lower(alias)")
        conn.execute(
            "INSERT INTO contacts (key, alias, alias_fold, trust, added, notes) "
            "VALUES (?, ?, ?, 'trusted', 1e12, '')",
            (key(2), "\u0412\u041e\u0412", "\u0432\u043e\u0432"),  # Cyrillic BOB, added later
        )
    conn.close()
    again = await Contacts.open(path)
    try:
        assert (await again.get(key(1))).alias == "bob"  # type: ignore[union-attr]
        assert (await again.get(key(2))).alias is None  # type: ignore[union-attr]
        assert (await again.resolve("bob")).key == key(1)
        blocked = await again.block(key(2))  # the twin can still be blocked, nothing lost
        assert blocked.trust is Trust.BLOCKED and len(again) == 3
    finally:
        await again.close()
    with sqlite3.connect(path) as conn:
        folds = dict(conn.execute("SELECT hex(key), alias_fold FROM contacts"))
    conn.close()
    assert folds == {key(1).hex().upper(): "bob", key(2).hex().upper(): None,
                     key(3).hex().upper(): "eve"}  # fmt: skip
