"""`mesh status`: the running node's state, or what is known without one."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from core.cli.output import emit
from core.control.client import ControlClient, NodeNotRunning
from core.datadir import resolve_data_dir
from core.identity import KEY_FILE_NAME, load_identity


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("status", help="identity, data dir and (when running) the node's state")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)


async def _running_status(args: argparse.Namespace) -> dict[str, Any] | None:
    path = resolve_data_dir(args.data_dir) / "control.sock"
    try:
        async with await ControlClient.connect(path, timeout=3) as client:
            result: dict[str, Any] = await client.call("status")
            return result
    except NodeNotRunning:
        return None


def cmd_status(args: argparse.Namespace) -> int:
    data_dir = resolve_data_dir(args.data_dir)
    running = asyncio.run(_running_status(args)) if (data_dir / "control.sock").exists() else None
    if running is not None:
        running["node"] = "running"
        emit(running, as_json=args.json)
        return 0
    identity = load_identity(data_dir / KEY_FILE_NAME)
    info: dict[str, object] = {**identity.describe(), "data_dir": str(data_dir)}
    info["node"] = "not running (start it with `mesh up`)"
    emit(info, as_json=args.json)
    return 0
