"""`mesh contacts`: the running node's contact list (through its control API).

    mesh contacts add KEY|KEY@mesh [--alias NAME]
    mesh contacts list [--json]
    mesh contacts rename CONTACT ALIAS
    mesh contacts block|unblock|remove CONTACT

CONTACT is an alias, a key, ``key@mesh`` or a unique key prefix. A malformed key or
alias is refused (exit code 2) before the node is asked, so nothing changes; so are the
node's own key and an alias taken by (or looking like) another contact's, by the node.

A change prints one line saying what happened, naming the contact, then its trust and
key: ``renamed carol to carol2: trusted <key>``. ``add`` of a key that is already a
contact says so (``carol is already a contact``) or says what it changed (renamed,
unblocked, trusted). ``list`` prints aligned columns (alias, trust, key), counting East
Asian wide characters as two columns.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import unicodedata
from typing import Any

from core.control.client import ControlClient
from core.datadir import resolve_data_dir


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("contacts", help="the contact list: add, list, rename, block, remove")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    add = verbs.add_parser("add", help="add a contact (trusted)")
    add.add_argument("key", help="the node's key (64 hex) or key@mesh")
    add.add_argument("--alias", help="a name for it (unique, at most 64 characters)")
    add.set_defaults(func=lambda a: _run(a, _add))
    ls = verbs.add_parser("list", help="every contact: alias, trust, key")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=lambda a: _run(a, _list))
    rename = verbs.add_parser("rename", help="give a contact another alias")
    rename.add_argument("contact", help="alias, key or key@mesh")
    rename.add_argument("alias")
    rename.set_defaults(func=lambda a: _run(a, _rename))
    for verb, text in (
        ("block", "refuse its messages and calls"),
        ("unblock", "trust it again"),
        ("remove", "forget it"),
    ):
        one = verbs.add_parser(verb, help=text)
        one.add_argument("contact", help="alias, key or key@mesh")
        one.add_argument("--json", action="store_true", help="print the contact as JSON")
        one.set_defaults(func=lambda a, verb=verb: _run(a, lambda c, a: _one(c, a, verb)))


def _run(args: argparse.Namespace, action: Any) -> int:
    async def go() -> int:
        path = resolve_data_dir(args.data_dir) / "control.sock"
        async with await ControlClient.connect(path) as client:
            code: int = await action(client, args)
            return code

    return asyncio.run(go())


def _width(text: str) -> int:
    """Terminal columns ``text`` takes: East Asian wide and fullwidth characters 2,
    combining marks and format characters 0, the rest 1 (as wcwidth counts)."""
    total = 0
    for char in text:
        if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
            continue
        total += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return total


def _pad(text: str, columns: int) -> str:
    return text + " " * max(0, columns - _width(text))


def _label(contact: dict[str, Any]) -> str:
    alias = contact.get("alias")
    return str(alias) if alias else str(contact["key"])[:16] + "…"


def _said(phrase: str, contact: dict[str, Any]) -> str:
    """One change, said: ``unblocked carol: trusted <key>``."""
    return f"{phrase}: {contact['trust']} {contact['key']}"


def _rows(contacts: list[dict[str, Any]]) -> list[str]:
    aliases = [str(c.get("alias") or "-") for c in contacts]
    columns = max(map(_width, aliases), default=1)
    trust = max((len(str(c["trust"])) for c in contacts), default=1)
    return [
        f"{_pad(alias, columns)}  {c['trust']!s:<{trust}}  {c['key']}"
        for alias, c in zip(aliases, contacts, strict=True)
    ]


async def _add(client: ControlClient, args: argparse.Namespace) -> int:
    from core.contacts import parse_key, validate_alias  # not the store: no database

    key = parse_key(args.key)  # refused here, before the node is asked
    if args.alias is not None:
        validate_alias(args.alias)
    before = {c["key"]: c for c in await client.call("contacts.list")}.get(key.hex())
    contact = await client.call("contacts.add", key=key.hex(), alias=args.alias)
    print(_said(_what_add_did(before, contact), contact))
    return 0


def _what_add_did(before: dict[str, Any] | None, after: dict[str, Any]) -> str:
    if before is None:
        return f"added {_label(after)}"
    done = []
    if before.get("alias") != after.get("alias"):
        done.append(
            f"renamed {_label(before)} to {_label(after)}"
            if before.get("alias")
            else f"gave {_label(before)} the alias {_label(after)}"
        )
    if before["trust"] != after["trust"]:
        if before["trust"] == "blocked":
            done.append(f"unblocked {_label(after)}")
        else:
            done.append(f"trusted {_label(after)} (was {before['trust']})")
    if not done:
        return f"{_label(after)} is already a contact"
    return "; ".join(done)


async def _list(client: ControlClient, args: argparse.Namespace) -> int:
    contacts = await client.call("contacts.list")
    if args.json:
        json.dump(contacts, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    elif not contacts:
        print("no contacts yet: mesh contacts add KEY --alias NAME")
    else:
        for row in _rows(contacts):
            print(row)
    return 0


async def _rename(client: ControlClient, args: argparse.Namespace) -> int:
    from core.contacts import validate_alias

    validate_alias(args.alias)
    before = await client.call("contacts.resolve", contact=args.contact)
    contact = await client.call("contacts.rename", contact=before["key"], alias=args.alias)
    if before.get("alias") == contact.get("alias"):
        print(_said(f"{_label(contact)} is already called so", contact))
    else:
        print(_said(f"renamed {_label(before)} to {_label(contact)}", contact))
    return 0


async def _one(client: ControlClient, args: argparse.Namespace, verb: str) -> int:
    contact = await client.call(f"contacts.{verb}", contact=args.contact)
    if args.json:
        json.dump(contact, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        done = {"block": "blocked", "unblock": "unblocked", "remove": "removed"}[verb]
        print(_said(f"{done} {_label(contact)}", contact))
    return 0
