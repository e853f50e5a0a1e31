"""`mesh up`, `mesh peers`, `mesh ping`: the node process and its control API."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from typing import TYPE_CHECKING, Any

from core.cli.output import emit
from core.cli.status_cmds import join_hint
from core.control.client import ControlClient
from core.datadir import resolve_data_dir
from core.errors import MeshError, UsageError
from core.service import ServicePlugin, discover_services
from core.text import safe_line

if TYPE_CHECKING:  # `mesh up` imports the node process; the other verbs never do
    from core.config import NodeConfig
    from core.forwarding import ForwardingConfig
    from core.node import Node
    from core.process import NodeProcess


def register(sub: argparse._SubParsersAction[Any], plugins: list[ServicePlugin]) -> None:
    up = sub.add_parser("up", help="run the node in the foreground (Ctrl-C stops it)")
    up.add_argument("--backend", choices=["auto", "yggdrasil", "embedded"])
    up.add_argument(
        "--managed",
        action="store_true",
        default=None,
        help="yggdrasil backend: start and supervise our own daemon (root)",
    )
    up.add_argument("--admin", help="daemon admin endpoint (unix:///path or tcp://host:port)")
    up.add_argument("--yggdrasil-binary", help="daemon binary for --managed")
    up.add_argument("--listen", action="append", metavar="URI", help="listen for peers (repeat)")
    up.add_argument("--peer", action="append", metavar="URI", help="static peer (repeat)")
    up.add_argument(
        "--multicast", action="append", metavar="REGEX", help="LAN discovery interfaces (repeat)"
    )
    up.add_argument(
        "--no-multicast", action="store_true", help="no LAN discovery (beacons and listening)"
    )
    up.add_argument("--if-name", help="TUN name for a managed daemon (default auto)")
    up.add_argument("--no-services", action="store_true", help="run only the node")
    up.add_argument("--socks", metavar="HOST:PORT", help="SOCKS5 proxy to the mesh (127.0.0.1)")
    up.add_argument(
        "--expose",
        action="append",
        metavar="LOCAL:MESH",
        help="serve 127.0.0.1:LOCAL on the mesh address's port MESH (repeat)",
    )
    up.add_argument(
        "--allow",
        action="append",
        metavar="KEY",
        help="only these keys (hex or KEY@mesh) may use exposed ports (repeat)",
    )
    for plugin in plugins:
        if plugin.add_up_arguments is not None:
            plugin.add_up_arguments(up)
    up.set_defaults(func=lambda args: cmd_up(args, plugins))

    peers = sub.add_parser("peers", help="list, add or remove peers of the running node")
    peers.add_argument("--json", action="store_true", help="print JSON")
    ps = peers.add_subparsers(dest="peers_cmd", metavar="COMMAND")
    for verb in ("add", "remove"):
        p = ps.add_parser(verb, help=f"{verb} a peer URI")
        p.add_argument("uri")
        p.set_defaults(func=lambda args, verb=verb: _run(_peers_change(args, verb)))
    peers.set_defaults(func=lambda args: _run(_peers_list(args)))

    ping = sub.add_parser("ping", help="ICMPv6 echo to a mesh address, key or key@mesh")
    ping.add_argument("target")
    ping.add_argument("-c", "--count", type=int, default=4)
    ping.add_argument("-i", "--interval", type=float, default=1.0)
    ping.add_argument("-W", "--timeout", type=float, default=5.0, help="seconds per probe")
    ping.add_argument("--json", action="store_true", help="print JSON")
    ping.set_defaults(func=lambda args: _run(_ping(args)))


def _config_from_args(args: argparse.Namespace) -> NodeConfig:
    from core.config import load_config

    config = load_config(resolve_data_dir(args.data_dir))
    return config.with_overrides(
        backend=args.backend,
        managed=args.managed,
        admin_endpoint=args.admin,
        yggdrasil_binary=args.yggdrasil_binary,
        listen=tuple(args.listen) if args.listen else None,
        peers=tuple(args.peer) if args.peer else None,
        multicast_interfaces=()
        if args.no_multicast
        else (tuple(args.multicast) if args.multicast else None),
        if_name=args.if_name,
    )


def _forwarding_from_args(args: argparse.Namespace, config: NodeConfig) -> ForwardingConfig:
    from core.forwarding import ForwardingConfig, parse_expose, parse_hostport
    from core.mailaddr import parse_mail_address

    fwd = config.service("forwarding")
    socks = args.socks or fwd.get("socks")
    expose = args.expose or list(fwd.get("expose", []))
    allow = args.allow or list(fwd.get("allow", []))
    keys = []
    for item in allow:
        keys.append(parse_mail_address(item).key if "@" in item else _hex_key(str(item)))
    return ForwardingConfig(
        socks=parse_hostport(socks) if socks else None,
        expose=tuple(parse_expose(str(e)) for e in expose),
        allow=frozenset(keys),
    )


def _hex_key(text: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise UsageError(f"{text!r} is not a 64-hex public key")
    return key


def cmd_up(args: argparse.Namespace, plugins: list[ServicePlugin]) -> int:
    from core.datadir import DataDirLock

    config = _config_from_args(args)
    # one node per data dir: refused (exit 2, one line) before anything in it is touched
    with DataDirLock.acquire(config.data_dir):
        return _up_locked(args, plugins, config)


def _up_locked(args: argparse.Namespace, plugins: list[ServicePlugin], config: NodeConfig) -> int:
    from core.identity import load_or_create_identity
    from core.process import NodeProcess
    from core.resources import raise_nofile_limit

    raise_nofile_limit()
    identity, created = load_or_create_identity(config.data_dir)
    if created:
        print(f"created a new identity in {config.data_dir}", file=sys.stderr)
    chosen = [] if args.no_services else plugins
    service_configs: dict[str, dict[str, Any]] = {}
    for plugin in chosen:
        merged = dict(config.service(plugin.name))
        if plugin.up_overrides is not None:
            merged.update({k: v for k, v in plugin.up_overrides(args).items() if v is not None})
        service_configs[plugin.name] = merged
    process = NodeProcess(
        config, identity, chosen, service_configs, forwarding=_forwarding_from_args(args, config)
    )
    asyncio.run(_announce_and_run(process))
    return 0


async def _announce_and_run(process: NodeProcess) -> None:
    from core.process import run_until_signal
    from core.resources import AcceptErrorThrottle

    async def announce() -> None:
        await process.ready.wait()
        node = process.node
        assert node is not None
        lines = [
            f"mesh node up: {node.address} ({node.backend.name}: {node.backend_reason})",
            f"  mail address {node.mail_address}",
            f"  control      {process.config.control_socket}",
        ]
        for name, state in process.failed.items():
            for what, why in state.items():
                lines.append(f"  {name} {what}: {why}")
        status = await node.status()
        hint = None if process.config.peers else join_hint(status)
        if hint is not None:  # said once, at start; `mesh status` says it while it lasts
            lines += [f"  {line}" for line in hint]
        print("\n".join(lines), file=sys.stderr, flush=True)
        await _ring_here(node)

    loop = asyncio.get_running_loop()
    throttle = AcceptErrorThrottle()
    throttle.install(loop)
    try:
        async with asyncio.TaskGroup() as tg:
            announcer = tg.create_task(announce())
            try:
                await run_until_signal(process)
            finally:
                announcer.cancel()
    except BaseExceptionGroup as group:
        # a node that cannot start (a bad --peer URI, a busy port) is one clear line
        # (UsageError: exit 2, MeshError: exit 1), not a task group's traceback
        errors = group.exceptions
        if len(errors) == 1 and isinstance(errors[0], MeshError):
            raise errors[0] from None
        raise
    finally:
        throttle.uninstall(loop)


async def _ring_here(node: Node) -> None:
    """``attention`` events (an incoming call, from an app) as a line and a terminal
    bell: the person running ``mesh up`` in the foreground hears it."""
    async with node.events.subscribe(("attention",)) as events:
        async for event in events:
            title = safe_line(str(event.data.get("title") or "attention"))
            text = safe_line(str(event.data.get("text") or ""))
            print(f"\a{title}: {text}" if text else f"\a{title}", file=sys.stderr, flush=True)


def _run(coro: Any) -> int:
    result: int = asyncio.run(coro)
    return result


async def _client(args: argparse.Namespace) -> ControlClient:
    return await ControlClient.connect(resolve_data_dir(args.data_dir) / "control.sock")


async def _peers_list(args: argparse.Namespace) -> int:
    async with await _client(args) as client:
        peers = await client.call("peers")
    if args.json:
        emit(peers, as_json=True)
        return 0
    if not peers:
        print("no peers")
    for p in peers:
        state = "up" if p["up"] else "down"
        direction = "in " if p["inbound"] else "out"
        key = (p.get("key") or "?")[:16]
        print(f"{state:4} {direction} {p['uri']}  key {key}…  {p.get('address') or ''}")
    return 0


async def _peers_change(args: argparse.Namespace, verb: str) -> int:
    async with await _client(args) as client:
        await client.call(f"peers.{verb}", uri=args.uri)
    print(f"{'added' if verb == 'add' else 'removed'} {args.uri}")
    return 0


async def _ping(args: argparse.Namespace) -> int:
    if args.count < 1 or args.count > 1000:
        raise UsageError("--count must be between 1 and 1000")
    async with await _client(args) as client:
        result = await client.call(
            "ping",
            target=args.target,
            count=args.count,
            interval=args.interval,
            timeout=args.timeout,
        )
    rtts: list[float | None] = result["rtts"]
    got = [r * 1000 for r in rtts if r is not None]
    summary: dict[str, Any] = {
        "target": args.target,
        "transmitted": len(rtts),
        "received": len(got),
        "loss_percent": round(100 * (len(rtts) - len(got)) / len(rtts), 1),
        "rtt_ms": [None if r is None else round(r * 1000, 3) for r in rtts],
    }
    if got:
        summary.update(
            min_ms=round(min(got), 3),
            avg_ms=round(statistics.fmean(got), 3),
            max_ms=round(max(got), 3),
            mdev_ms=round(statistics.pstdev(got), 3),
        )
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for seq, rtt in enumerate(summary["rtt_ms"], 1):
            print(f"seq={seq} " + (f"time={rtt} ms" if rtt is not None else "timeout"))
        print(
            f"--- {args.target} ping statistics ---\n"
            f"{summary['transmitted']} transmitted, {summary['received']} received, "
            f"{summary['loss_percent']}% packet loss"
        )
        if got:
            print(
                f"rtt min/avg/max/mdev = {summary['min_ms']}/{summary['avg_ms']}/"
                f"{summary['max_ms']}/{summary['mdev_ms']} ms"
            )
    return 0 if got else 1


def discover() -> list[ServicePlugin]:
    return discover_services()
