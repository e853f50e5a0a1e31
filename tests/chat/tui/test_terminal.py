"""`mesh chat` in a real terminal: tmux runs it against a live `mesh up` node; keys go in
with send-keys, the screen comes back with capture-pane. One message sent, one received."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apps.chat.tui.client import ChatClient
from core.service import discover_services
from tests.conftest import require

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]
MESH = [sys.executable, "-m", "core.cli.main"]


def _mesh_up(data_dir: Path, *extra: str) -> subprocess.Popen[bytes]:
    command = [*MESH, "--data-dir", str(data_dir), "up", "--backend", "embedded"]
    with open(data_dir.parent / f"{data_dir.name}.log", "wb") as log:
        return subprocess.Popen(
            [*command, "--no-multicast", *extra], stdout=log, stderr=log, start_new_session=True
        )


async def _client(data_dir: Path, timeout: float = 30) -> ChatClient:
    end = time.monotonic() + timeout
    while True:
        try:
            client = await ChatClient.connect(data_dir / "control.sock")
            await client.call("chat.info")
            return client
        except Exception:
            if time.monotonic() > end:
                raise
            await asyncio.sleep(0.2)


def _tmux(*args: str) -> str:
    out = subprocess.run(["tmux", *args], check=True, capture_output=True, text=True, timeout=10)
    return out.stdout


@contextlib.contextmanager
def _stopping(*procs: subprocess.Popen[bytes]) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


async def _screen_shows(session: str, text: str, timeout: float = 20) -> str:
    end = time.monotonic() + timeout
    while True:
        screen = _tmux("capture-pane", "-p", "-t", session)
        if text in screen:
            return screen
        if time.monotonic() > end:
            raise AssertionError(f"{text!r} never on screen; last screen:\n{screen}")
        await asyncio.sleep(0.2)


async def test_mesh_chat_in_tmux_sends_and_receives(tmp_path: Path) -> None:
    require(shutil.which("tmux") is not None, "tmux is not installed (Debian package tmux)")
    require(
        any(p.name == "chat" for p in discover_services()),
        "the chat service (apps/chat, issue 10) is not installed",
    )
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    a = _mesh_up(a_dir, "--listen", "tcp://127.0.0.1:0")
    with _stopping(a):
        a_client = await _client(a_dir)
        status: dict[str, Any] = await a_client.call("status")
        uri = status["backend_status"]["listening"][0]
        b = _mesh_up(b_dir, "--peer", uri)
        with _stopping(b):
            b_client = await _client(b_dir)
            a_key = (await a_client.call("chat.info"))["key"]
            b_key = (await b_client.call("chat.info"))["key"]
            for _ in range(60):
                got = await a_client.call("ping", target=f"{b_key}@mesh", count=1, timeout=1)
                if got["rtts"][0] is not None:
                    break
            session = f"tu-term-{os.getpid()}"
            command = " ".join([*MESH, "--data-dir", str(a_dir), "chat", b_key])
            _tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "36", command)
            try:
                await _screen_shows(session, "Conversations")
                _tmux("send-keys", "-t", session, "-l", "typed in a real terminal")
                _tmux("send-keys", "-t", session, "Enter")

                async def arrived() -> bool:
                    msgs = (await b_client.call("chat.history", contact=a_key))["messages"]
                    return any(m["body"] == "typed in a real terminal" for m in msgs)

                end = time.monotonic() + 30
                while not await arrived():
                    screen = _tmux("capture-pane", "-p", "-t", session)
                    assert time.monotonic() < end, f"the typed message never reached b:\n{screen}"
                    await asyncio.sleep(0.2)
                await b_client.call("chat.send", contact=a_key, body="answer from the other node")
                await _screen_shows(session, "answer from the other node")

                # Issue 20 finding 7: typing ahead sends each line once, as typed.
                _tmux("send-keys", "-t", session, "m1", "Enter", "m2", "Enter", "m3", "Enter")
                # finding 8: ctrl+j inserts a newline in a real terminal (tmux)
                _tmux("send-keys", "-t", session, "top", "C-j", "bottom", "Enter")
                # alt+n is a command (next unread), never the letter n in the message
                _tmux("send-keys", "-t", session, "M-n", "after", "Enter")

                async def bodies() -> list[str]:
                    msgs = (await b_client.call("chat.history", contact=a_key))["messages"]
                    return [m["body"] for m in msgs if m["direction"] == "in"]

                end = time.monotonic() + 30
                while len(await bodies()) < 6:
                    assert time.monotonic() < end, f"not all arrived: {await bodies()}"
                    await asyncio.sleep(0.2)
                assert (await bodies())[1:] == ["m1", "m2", "m3", "top\nbottom", "after"]
            finally:
                with contextlib.suppress(Exception):
                    _tmux("kill-session", "-t", session)
                await b_client.close()
                await a_client.close()


async def test_mesh_chat_in_tmux_reconnects_after_the_node_restarts(tmp_path: Path) -> None:
    """Issue 20 finding 10: the node restarts under an open `mesh chat`; it reconnects
    by itself and says so (a real terminal, a real `mesh up`)."""
    require(shutil.which("tmux") is not None, "tmux is not installed (Debian package tmux)")
    a_dir = tmp_path / "a"
    a_dir.mkdir()
    a = _mesh_up(a_dir)
    session = f"tu-reco-{os.getpid()}"
    with _stopping(a):
        client = await _client(a_dir)
        await client.close()
        command = " ".join([*MESH, "--data-dir", str(a_dir), "chat"])
        _tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "36", command)
        try:
            await _screen_shows(session, "Conversations")
            a.terminate()
            a.wait(timeout=20)
            await _screen_shows(session, "reconnecting")
            again = _mesh_up(a_dir)
            with _stopping(again):
                await _screen_shows(session, "reconnected to the node", timeout=60)
        finally:
            with contextlib.suppress(Exception):
                _tmux("kill-session", "-t", session)
