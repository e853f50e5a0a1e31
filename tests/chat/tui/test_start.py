"""`mesh chat` with no node: it says so and how to start one; with --start it starts
`mesh up` in the background (detached, log in the data dir) and attaches."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from apps.chat.tui.app import connect
from core.control.client import NodeNotRunning


async def test_no_node_says_how_to_start_one(tmp_path: Path) -> None:
    with pytest.raises(NodeNotRunning) as err:
        await connect(tmp_path, start=False)
    assert "Start one with `mesh up`" in str(err.value)
    assert "mesh chat --start" in str(err.value)
    assert not (tmp_path / "mesh-up.log").exists()


@pytest.mark.timeout(60)
async def test_start_runs_mesh_up_in_the_background_and_attaches(tmp_path: Path) -> None:
    # Loopback only: the embedded backend, no LAN discovery, no listeners.
    (tmp_path / "mesh.toml").write_text('[node]\nbackend = "embedded"\nmulticast_interfaces = []\n')
    client, proc = await connect(tmp_path, start=True)
    assert proc is not None
    try:
        status = await client.call("status")
        assert status["control_socket"] == str(tmp_path / "control.sock")
        assert os.getsid(proc.pid) == proc.pid  # its own session: the terminal can go
        assert (tmp_path / "mesh-up.log").exists()
        again, second = await connect(tmp_path, start=True)  # a node runs: no second one
        assert second is None
        await again.close()
    finally:
        await client.close()
        proc.terminate()
        await asyncio.to_thread(proc.wait, 20)
