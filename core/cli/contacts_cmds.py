"""`mesh contacts`: the running node's contact list (through its control API).

    mesh contacts add KEY|KEY@mesh [--alias NAME]
    mesh contacts list [--json]
    mesh contacts rename CONTACT ALIAS
    mesh contacts block|unblock|remove CONTACT

CONTACT is an alias, a key, ``key@mesh`` or a unique key prefix. A malformed key or
alias is refused (exit code 2) before the node is asked, so nothing changes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from core.contacts import parse_key, validate_alias
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


def _line(contact: dict[str, Any]) -> str:
    alias = contact.get("alias") or "-"
    return f"{alias:<20} {contact['trust']:<8} {contact['key']}"


async def _add(client: ControlClient, args: argparse.Namespace) -> int:
    key = parse_key(args.key)  # refused here, before the node is asked
    if args.alias is not None:
        validate_alias(args.alias)
    contact = await client.call("contacts.add", key=key.hex(), alias=args.alias)
    print(f"added {_line(contact)}")
    return 0


async def _list(client: ControlClient, args: argparse.Namespace) -> int:
    contacts = await client.call("contacts.list")
    if args.json:
        json.dump(contacts, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    elif not contacts:
        print("no contacts yet: mesh contacts add KEY --alias NAME")
    else:
        for contact in contacts:
            print(_line(contact))
    return 0


async def _rename(client: ControlClient, args: argparse.Namespace) -> int:
    validate_alias(args.alias)
    contact = await client.call("contacts.rename", contact=args.contact, alias=args.alias)
    print(f"renamed {_line(contact)}")
    return 0


async def _one(client: ControlClient, args: argparse.Namespace, verb: str) -> int:
    contact = await client.call(f"contacts.{verb}", contact=args.contact)
    if args.json:
        json.dump(contact, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        done = {"block": "blocked", "unblock": "unblocked", "remove": "removed"}[verb]
        print(f"{done} {_line(contact)}")
    return 0
