"""A real yggdrasil 0.5 daemon for the e2 (session/IPv6 layer) tests.

Runs ``/usr/sbin/yggdrasil`` with a generated config (no multicast, admin socket in a
temporary directory), optionally inside a network namespace, and talks to it with
``yggdrasilctl -json``. Every process is owned by the context manager and stopped in
``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.identity import Identity

YGGDRASIL = "/usr/sbin/yggdrasil"
YGGDRASILCTL = "/usr/sbin/yggdrasilctl"


def have_yggdrasil() -> bool:
    return os.access(YGGDRASIL, os.X_OK) and os.access(YGGDRASILCTL, os.X_OK)


def have_netns() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


@dataclass
class Daemon:
    identity: Identity
    admin: str
    netns: str | None
    log_path: Path

    async def ctl(self, command: str, **args: str) -> Any:
        argv = [YGGDRASILCTL, "-json", f"-endpoint=unix://{self.admin}", command]
        argv += [f"{k}={v}" for k, v in args.items()]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"yggdrasilctl {command} failed: {(out + err).decode()[-400:]}")
        return json.loads(out)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def netns_argv(netns: str | None, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv] if netns else argv


@contextlib.asynccontextmanager
async def run_daemon(
    directory: Path,
    identity: Identity,
    *,
    listen: list[str] | None = None,
    peers: list[str] | None = None,
    ifname: str = "none",
    netns: str | None = None,
    start_timeout: float = 20.0,
) -> AsyncIterator[Daemon]:
    directory.mkdir(parents=True, exist_ok=True)
    admin = directory / "admin.sock"
    config = {
        "PrivateKey": identity.to_yggdrasil_hex(),
        "Peers": peers or [],
        "InterfacePeers": {},
        "Listen": listen or [],
        "AdminListen": f"unix://{admin}",
        "MulticastInterfaces": [],
        "AllowedPublicKeys": [],
        "IfName": ifname,
        "IfMTU": 65535,
        "NodeInfoPrivacy": False,
        "NodeInfo": {"e2test": directory.name},
    }
    conf_path = directory / "yggdrasil.conf"
    conf_path.write_text(json.dumps(config))
    log_path = directory / "yggdrasil.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            *netns_argv(netns, [YGGDRASIL, "-useconffile", str(conf_path), "-logto", "stdout"]),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    daemon = Daemon(identity, str(admin), netns, log_path)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + start_timeout
        while True:
            if proc.returncode is not None:
                raise RuntimeError(f"yggdrasil exited early:\n{daemon.log()[-2000:]}")
            if admin.exists():
                with contextlib.suppress(RuntimeError):
                    await daemon.ctl("getSelf")
                    break
            if loop.time() > deadline:
                raise RuntimeError(f"yggdrasil did not start:\n{daemon.log()[-2000:]}")
            await asyncio.sleep(0.1)
        yield daemon
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def poll(predicate: Any, timeout: float, interval: float = 0.1) -> Any:
    """Await ``predicate()`` (sync or async) until truthy; return it or raise TimeoutError."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)
