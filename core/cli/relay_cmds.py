"""`mesh relay`: hold for others, and choose who holds for us (through the control API).

    mesh relay allow KEY|ALIAS     let that person enroll with this node as a relay
    mesh relay deny KEY|ALIAS      withdraw it (what is held for them stays until fetched)
    mesh relay use KEY|ALIAS       enroll with that relay (returns once it answered)
    mesh relay drop KEY|ALIAS      leave it (contacts are told at once)
    mesh relay status [--json]     serving, using, and the relays our contacts announced

Exit codes: 0 done; 2 a bad key or an unknown alias (nothing asked, nothing changed);
1 the relay refused or could not be reached (the reason is printed), or no node runs.
A relay may be named by its bare key without being a contact.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from core.cli.contacts_cmds import _run as run_on_node
from core.cli.names import or_dash, short_key
from core.control.client import ControlClient

__all__ = ["register"]

_DONE = {
    "allow": "allowed {who} to enroll here",
    "deny": "denied {who} (what is held for them stays until fetched or expired)",
    "use": "enrolled with the relay {who}",
    "drop": "dropped the relay {who}",
}
_HELP = {
    "allow": "let a person enroll with this node as their relay",
    "deny": "withdraw a person's permission to enroll here",
    "use": "enroll with a relay (it must have allowed this node)",
    "drop": "leave a relay",
}


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("relay", help="relays: hold messages for people who are offline")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb in ("allow", "deny", "use", "drop"):
        one = verbs.add_parser(verb, help=_HELP[verb])
        one.add_argument("name", metavar="KEY|ALIAS", help="a 64-hex key, key@mesh or alias")
        one.add_argument("--json", action="store_true", help="print the result as JSON")
        one.set_defaults(func=lambda a, verb=verb: _run(a, lambda c, a: _change(c, a, verb)))
    status = verbs.add_parser("status", help="what this node holds, which relays it uses")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=lambda a: _run(a, _status))


def _run(args: argparse.Namespace, action: Any) -> int:
    name = getattr(args, "name", None)
    if isinstance(name, str) and (len(name.strip()) == 64 or "@" in name):
        from core.contacts import parse_key

        parse_key(name)  # a malformed key is refused before the node is asked
    return run_on_node(args, action)


async def _change(client: ControlClient, args: argparse.Namespace, verb: str) -> int:
    result = await client.call(f"relay.{verb}", name=args.name)
    if args.json:
        json.dump(result, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        who = args.name if len(args.name) != 64 else short_key(args.name)
        print(_DONE[verb].format(who=who) + f": {result['key']}")
    return 0


async def _status(client: ControlClient, args: argparse.Namespace) -> int:
    status = await client.call("relay.status")
    if args.json:
        json.dump(status, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    print("serving (held here for):" + ("" if status["serving"] else " nobody"))
    for s in status["serving"]:
        print(f"  {_who(s)}  {s['held']} held, {s['bytes']} bytes  {s['key']}")
    print("using (our relays):" + ("" if status["using"] else " none (mesh relay use KEY)"))
    for u in status["using"]:
        print(
            f"  {_who(u)}  {u['state']}  last fetch {or_dash(_when(u['last_fetch']))}  {u['key']}"
        )
    print("contacts' relays:" + ("" if status["contacts"] else " none announced"))
    for c in status["contacts"]:
        relays = ", ".join(short_key(k) for k in c["relays"]) or "none"
        print(f"  {_who(c)}  {relays}")
    return 0


def _who(row: dict[str, Any]) -> str:
    return str(row.get("alias") or short_key(str(row["key"])))


def _when(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))
