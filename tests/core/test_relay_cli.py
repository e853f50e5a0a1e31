"""`mesh relay` as a person types it, against real node processes (`mesh up`'s
NodeProcess, with its relay service) on an in-memory mesh run in a thread of its own:
names, exit codes and the ``status --json`` fields are the issue's contract."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from core.config import NodeConfig
from core.identity import Identity
from core.process import NodeProcess
from core.testing import MemMesh

pytestmark = pytest.mark.timeout(240)

MESH = [sys.executable, "-m", "core.cli.main"]
HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass
class Lab:
    base: Path
    loop: asyncio.AbstractEventLoop
    keys: dict[str, str]

    def dir(self, name: str) -> Path:
        return self.base / name

    def run(self, coro: Any) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(60)


def mesh(lab: Lab, who: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MESH, "--data-dir", str(lab.dir(who)), *args],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    base = Path(tempfile.mkdtemp(prefix="rly"))  # short: control socket paths
    loop = asyncio.new_event_loop()
    started = threading.Event()
    thread = threading.Thread(target=lambda: _loop(loop, started), daemon=True)
    thread.start()
    started.wait(10)
    stop = asyncio.Event()
    memmesh = MemMesh(base / "mem")
    tasks: list[Any] = []

    async def start() -> dict[str, str]:
        keys = {}
        procs = []
        for name in ("a", "b", "r"):
            config = NodeConfig(
                data_dir=base / name,
                backend="embedded",
                services={"relay": {"handoff_after": 1, "connect_timeout": 3}},  # type: ignore[dict-item]
            )
            proc = NodeProcess(config, Identity.generate(), [], {}, open_node=memmesh.node_opener())
            tasks.append(asyncio.ensure_future(proc.run(stop)))
            async with asyncio.timeout(30):
                await proc.ready.wait()
            assert proc.node is not None
            keys[name] = proc.node.key.hex()
            procs.append(proc)
        for i, j in ((0, 1), (0, 2), (1, 2)):
            await memmesh.link(procs[i].node, procs[j].node, ready=False)  # type: ignore[arg-type]
        await memmesh.wait_ready()
        return keys

    async def finish() -> None:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await memmesh.close()

    fut = asyncio.run_coroutine_threadsafe(start(), loop)
    try:
        keys = fut.result(90)
        yield Lab(base, loop, keys)
    finally:
        asyncio.run_coroutine_threadsafe(finish(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        shutil.rmtree(base, ignore_errors=True)


def _loop(loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(started.set)
    loop.run_forever()


def status(lab: Lab, who: str) -> dict[str, Any]:
    out = mesh(lab, who, "relay", "status", "--json")
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_a_bad_key_or_unknown_alias_exits_2_and_changes_nothing(lab: Lab) -> None:
    before = status(lab, "a")
    bads = ["a1" * 31, "zz" * 32, f"{'a1' * 32}@example.org", "nobody"]
    for verb, bad in zip(["allow", "deny", "use", "drop"] * 2, bads + bads[::-1], strict=True):
        out = mesh(lab, "a", "relay", verb, bad)
        assert out.returncode == 2, (verb, bad, out.stdout + out.stderr)
        assert out.stderr.startswith("mesh:")
    own = mesh(lab, "a", "relay", "use", lab.keys["a"])
    assert own.returncode == 2 and "own key" in own.stderr
    assert status(lab, "a") == before


def test_enroll_announce_status_and_drop_through_the_cli(lab: Lab) -> None:
    a, b, r = lab.keys["a"], lab.keys["b"], lab.keys["r"]
    # B asks before R allowed it: refused, exit 1 with the reason
    out = mesh(lab, "b", "relay", "use", r)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "refused" in out.stderr and "not-allowed" in out.stderr
    assert [u["state"] for u in status(lab, "b")["using"]] == ["refused"]

    assert mesh(lab, "r", "contacts", "add", a, "--alias", "alice").returncode == 0
    out = mesh(lab, "r", "relay", "allow", "alice")  # by alias
    assert out.returncode == 0, out.stderr
    assert mesh(lab, "r", "relay", "allow", b).returncode == 0  # by bare key
    assert mesh(lab, "b", "contacts", "add", a, "--alias", "alice").returncode == 0
    assert mesh(lab, "a", "contacts", "add", b, "--alias", "bob").returncode == 0

    out = mesh(lab, "a", "relay", "use", r)  # a bare key, not a contact
    assert out.returncode == 0, out.stderr
    assert "enrolled" in out.stdout
    assert mesh(lab, "b", "relay", "use", r).returncode == 0

    at_a = status(lab, "a")
    assert at_a["using"] == [
        {"key": r, "alias": None, "state": "enrolled", "last_fetch": at_a["using"][0]["last_fetch"]}
    ]
    serving = {s["key"]: s for s in status(lab, "r")["serving"]}
    assert serving[a] == {"key": a, "alias": "alice", "held": 0, "bytes": 0}
    assert serving[b]["alias"] is None and serving[b]["held"] == 0

    def b_knows_a() -> bool:
        return {"key": a, "alias": "alice", "relays": [r]} in status(lab, "b")["contacts"]

    _eventually(b_knows_a)
    for row in [*at_a["using"], *status(lab, "r")["serving"], *status(lab, "b")["contacts"]]:
        assert HEX64.fullmatch(row["key"])

    people = mesh(lab, "r", "relay", "status").stdout
    assert "alice" in people and "held" in people

    out = mesh(lab, "a", "relay", "drop", r)
    assert out.returncode == 0, out.stderr
    assert status(lab, "a")["using"] == []
    _eventually(lambda: {"key": a, "alias": "alice", "relays": []} in status(lab, "b")["contacts"])
    assert mesh(lab, "r", "relay", "deny", "alice").returncode == 0
    assert mesh(lab, "a", "relay", "use", r).returncode == 1  # denied now


def test_use_of_a_relay_that_cannot_be_reached_exits_1_and_is_pending(lab: Lab) -> None:
    nobody = os.urandom(32).hex()
    out = mesh(lab, "a", "relay", "use", nobody)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "cannot be reached" in out.stderr
    states = {u["key"]: u["state"] for u in status(lab, "a")["using"]}
    assert states[nobody] == "pending"


def _eventually(check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.2)
