"""`mesh status`: what is known about this node."""

from __future__ import annotations

import argparse
from typing import Any

from core.cli.output import emit
from core.datadir import resolve_data_dir
from core.identity import KEY_FILE_NAME, load_identity


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("status", help="identity, data dir and (when running) the node's state")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    data_dir = resolve_data_dir(args.data_dir)
    identity = load_identity(data_dir / KEY_FILE_NAME)
    info: dict[str, object] = {**identity.describe(), "data_dir": str(data_dir)}
    info["node"] = "not running"
    emit(info, as_json=args.json)
    return 0
