"""`mesh status`: the running node's state, or what is known without one."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Mapping
from typing import Any

from core.cli.output import emit
from core.control.client import ControlClient, NodeNotRunning
from core.datadir import resolve_data_dir

PUBLIC_PEERS_URL = "https://publicpeers.neilalexander.dev"


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("status", help="identity, data dir and (when running) the node's state")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)


def join_hint(status: Mapping[str, Any]) -> list[str] | None:
    """How to join the mesh, for a node with no peers (None when it has some)."""
    if status.get("peers"):
        return None
    backend = status.get("backend_status") or {}
    if status.get("backend") == "embedded":
        interfaces = backend.get("multicast") or []
        lan = (
            f"LAN discovery is on (interfaces matching {', '.join(map(str, interfaces))}): "
            "nodes on the same network find each other by themselves"
            if interfaces
            else "LAN discovery is off (started with --no-multicast or "
            "node.multicast_interfaces = [])"
        )
    else:
        lan = "LAN discovery is the daemon's (MulticastInterfaces in its config)"
    return [
        "no peers yet: this node reaches only itself",
        "add a peer: `mesh peers add tls://HOST:PORT` (now), or `mesh up --peer tls://HOST:PORT`"
        " or `peers = [...]` under [node] in mesh.toml in the data dir (every start)",
        lan,
        f"public peers: {PUBLIC_PEERS_URL} (see 'Joining the mesh' in README.md)",
    ]


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
        hint = join_hint(running)
        if hint is not None:
            running["join"] = hint
        emit(running, as_json=args.json)
        return 0
    from core.identity import KEY_FILE_NAME, load_identity  # cryptography: only here

    identity = load_identity(data_dir / KEY_FILE_NAME)
    info: dict[str, object] = {**identity.describe(), "data_dir": str(data_dir)}
    info["node"] = "not running (start it with `mesh up`)"
    emit(info, as_json=args.json)
    return 0
