"""A meshsuite node as its own process inside a lab host (``ip netns exec``).

    ip netns exec lb-line-c python -m tests.lab.node_runner --admin unix:///... --echo 4300

Prints ``READY {"key": ..., "address": ...}`` once the node is up and serving, then one
``EVENT {...}`` line per node event, and closes the node when stdin closes. Stands in
for ``mesh up`` in the lab until that command and its control API exist.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from core.config import NodeConfig
from core.identity import load_or_create_identity
from core.node import Node
from tests.lab.fixtures import echo_handler


async def main(args: argparse.Namespace) -> None:
    data_dir = Path(args.data_dir)
    identity = load_or_create_identity(data_dir)[0] if args.managed else None
    config = NodeConfig(
        data_dir=data_dir,
        backend="yggdrasil",
        managed=args.managed,
        admin_endpoint=args.admin,
        yggdrasil_binary=args.binary,
        listen=tuple(args.listen),
        peers=tuple(args.peer),
        if_name=args.if_name,
    )
    loop = asyncio.get_running_loop()
    async with await Node.open(config, identity) as node:
        if args.echo:
            await node.start_server(echo_handler, args.echo)
        print("READY " + json.dumps({"key": node.key.hex(), "address": str(node.address)}))
        sys.stdout.flush()
        async with node.events.subscribe() as events:

            async def report() -> None:
                async for event in events:
                    print("EVENT " + json.dumps(event.to_json()), flush=True)

            reporter = loop.create_task(report())
            await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
            reporter.cancel()


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--admin")
    parser.add_argument("--managed", action="store_true")
    parser.add_argument("--binary", default="yggdrasil")
    parser.add_argument("--listen", action="append", default=[])
    parser.add_argument("--peer", action="append", default=[])
    parser.add_argument("--if-name", default="auto")
    parser.add_argument("--echo", type=int, default=0)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
