"""`mesh init`, `mesh key ...`: the node identity from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from core.address import address_for_key, subnet_for_key
from core.cli.output import emit
from core.datadir import resolve_data_dir
from core.errors import UsageError
from core.mailaddr import parse_mail_address


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("init", help="create this node's identity if absent and show it")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_init)

    key = sub.add_parser("key", help="keys and addresses")
    ks = key.add_subparsers(dest="key_cmd", required=True, metavar="COMMAND")
    a = ks.add_parser("address", help="address and subnet for any public key (no data dir)")
    a.add_argument("key", help="64 hex characters, or KEY@mesh")
    a.add_argument("--json", action="store_true", help="print JSON")
    a.set_defaults(func=cmd_key_address)

    imp = ks.add_parser(
        "import", help="use the key of a yggdrasil config (PrivateKey / PrivateKeyPath) or PEM"
    )
    imp.add_argument("file", help="yggdrasil.conf (0.4 or 0.5) or a PEM PKCS#8 key; - for stdin")
    imp.add_argument("--force", action="store_true", help="replace an existing node key")
    imp.add_argument("--json", action="store_true", help="print JSON")
    imp.set_defaults(func=cmd_key_import)

    exp = ks.add_parser("export", help="print the node key for a yggdrasil config")
    exp.add_argument(
        "--format",
        choices=["hex", "pem", "config"],
        default="hex",
        help="hex: PrivateKey value; pem: a PrivateKeyPath file; config: a JSON config snippet",
    )
    exp.set_defaults(func=cmd_key_export)


def _parse_public_key(text: str) -> bytes:
    value = text.strip()
    if "@" in value:
        return parse_mail_address(value).key
    if len(value) != 64:
        raise UsageError(f"a public key is 64 hex characters, got {len(value)}: {text!r}")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise UsageError(f"a public key is hex: {text!r}") from None


def cmd_init(args: argparse.Namespace) -> int:
    from core.identity import load_or_create_identity  # (cryptography: these verbs only)

    data_dir = resolve_data_dir(args.data_dir)
    identity, created = load_or_create_identity(data_dir)
    info: dict[str, object] = {**identity.describe(), "data_dir": str(data_dir)}
    info["created"] = created
    emit(info, as_json=args.json)
    return 0


def cmd_key_address(args: argparse.Namespace) -> int:
    key = _parse_public_key(args.key)
    emit(
        {
            "key": key.hex(),
            "address": str(address_for_key(key)),
            "subnet": str(subnet_for_key(key)),
        },
        as_json=args.json,
    )
    return 0


def cmd_key_import(args: argparse.Namespace) -> int:
    from core.identity import KEY_FILE_NAME, parse_yggdrasil_key, write_key_file

    data_dir = resolve_data_dir(args.data_dir)
    if args.file == "-":
        identity = parse_yggdrasil_key(sys.stdin.buffer.read(), "<stdin>", Path.cwd())
    else:
        src = Path(args.file)
        try:
            data = src.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {src}: {exc}") from None
        identity = parse_yggdrasil_key(data, str(src), src.parent)
    write_key_file(data_dir / KEY_FILE_NAME, identity, overwrite=args.force)
    emit({**identity.describe(), "data_dir": str(data_dir)}, as_json=args.json)
    return 0


def cmd_key_export(args: argparse.Namespace) -> int:
    from core.identity import KEY_FILE_NAME, load_identity

    identity = load_identity(resolve_data_dir(args.data_dir) / KEY_FILE_NAME)
    if args.format == "pem":
        sys.stdout.write(identity.to_pem().decode())
    elif args.format == "config":
        sys.stdout.write(identity.to_yggdrasil_config())
    else:
        print(identity.to_yggdrasil_hex())
    return 0
