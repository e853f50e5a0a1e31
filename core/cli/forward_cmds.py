"""`mesh connect` and `mesh listen`: netcat over the mesh, through the running node."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import stat
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from core.control.client import NodeNotRunning
from core.control.protocol import encode
from core.datadir import resolve_data_dir
from core.errors import MeshError, UsageError


def register(sub: argparse._SubParsersAction[Any]) -> None:
    c = sub.add_parser("connect", help="stdin/stdout over a mesh TCP connection (like nc)")
    c.add_argument("target", help="mesh address, key or key@mesh")
    c.add_argument("port", type=int)
    c.set_defaults(func=lambda a: asyncio.run(_stream(a, "connect", target=a.target, port=a.port)))
    l_ = sub.add_parser("listen", help="accept one mesh TCP connection on PORT to stdin/stdout")
    l_.add_argument("port", type=int)
    l_.set_defaults(func=lambda a: asyncio.run(_stream(a, "listen", port=a.port)))


async def _stdin_reader() -> Callable[[], Awaitable[bytes]]:
    """Read stdin without blocking the loop: a pipe, socket or terminal through the
    selector; a regular file or /dev/null (which epoll refuses) in a thread."""
    loop = asyncio.get_running_loop()
    mode = os.fstat(sys.stdin.fileno()).st_mode
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or sys.stdin.isatty():
        stream = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stream), sys.stdin)
        return lambda: stream.read(65536)
    raw = sys.stdin.buffer.raw if hasattr(sys.stdin.buffer, "raw") else sys.stdin.buffer

    async def read() -> bytes:
        return await loop.run_in_executor(None, raw.read, 65536) or b""

    return read


async def _stream(args: argparse.Namespace, method: str, **params: Any) -> int:
    path = resolve_data_dir(args.data_dir) / "control.sock"
    try:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 20)
    except (FileNotFoundError, ConnectionRefusedError):
        raise NodeNotRunning(f"no node is running (no answer on {path}); start `mesh up`") from None
    writer.write(encode({"id": 1, "method": method, "params": params}))
    line = await reader.readline()
    try:
        reply = json.loads(line)
    except json.JSONDecodeError:
        raise MeshError("the node closed the connection") from None
    if "error" in reply:
        err = reply["error"]
        cls = UsageError if err.get("code") == "bad_request" else MeshError
        raise cls(err.get("message", "failed"))
    print(f"mesh {method}: {_describe(reply.get('result'))}", file=sys.stderr, flush=True)
    read_stdin = await _stdin_reader()

    async def up() -> None:
        while data := await read_stdin():
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    async def down() -> None:
        out = sys.stdout.buffer
        while data := await reader.read(65536):
            out.write(data)
            out.flush()

    async def up_until_closed() -> None:
        with contextlib.suppress(ConnectionError):
            await up()

    # Both directions run to their end: the remote side half-closing does not cut off
    # what we still have to send (TCP half-close, as `nc -N` does).
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(up_until_closed())
            tg.create_task(down())
    finally:
        writer.close()
    return 0


def _describe(result: Any) -> str:
    """``connected to [addr]:port, peer key …`` from the node's reply, for people."""
    if not isinstance(result, dict):
        return str(result)
    labels = {"connected": "connected to", "listening": "listening on", "peer_key": "peer key"}
    parts = [f"{labels.get(key, key.replace('_', ' '))} {value}" for key, value in result.items()]
    return ", ".join(parts)
