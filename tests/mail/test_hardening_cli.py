"""`mesh mail ...` as a person runs it: `send` goes to the port the running node really
listens on (`mesh up --smtp`), and `mesh mail queue | head` ends quietly."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from apps.mail.passwords import set_password
from apps.mail.queue import OUTBOX_FILE_NAME, OutboxQueue
from core.identity import Identity
from core.mailaddr import MailAddress
from tests.mail.helpers import PASSWORD
from tests.node.test_first_run import MESH, NodeProc, mesh

pytestmark = pytest.mark.timeout(120)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_send_uses_the_submission_port_the_node_was_started_with(tmp_path: Path) -> None:
    data = tmp_path / "node"
    set_password(data, PASSWORD)
    port = _free_port()  # not in mesh.toml: only `mesh up --smtp` knows it
    node = NodeProc(data, "--smtp", f"127.0.0.1:{port}", "--imap", "127.0.0.1:0")
    try:
        address = json.loads(mesh(data, "mail", "address", "--json").stdout)
        assert address["smtp_submission"] == f"127.0.0.1:{port}"
        own = address["mail_address"]
        sent = mesh(
            data, "mail", "send", "--to", own, "--subject", "port", "--password-stdin", "--json",
            input=f"{PASSWORD}\nto myself through --smtp\n",
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        assert json.loads(sent.stdout)["queued_for"] == [own]
    finally:
        node.stop()


def _someone() -> str:
    return str(MailAddress(Identity.generate().public_key))


def _fill_queue(data: Path, messages: int, recipients: int) -> None:
    async def fill() -> None:
        queue = await OutboxQueue.open(data / OUTBOX_FILE_NAME)
        try:
            sender = _someone()
            for i in range(messages):
                rcpts = [_someone() for _ in range(recipients)]
                raw = f"From: {sender}\r\nSubject: {i}\r\n\r\nx\r\n".encode()
                await queue.enqueue(sender, raw, f"<{i}@q>", rcpts)
        finally:
            await queue.close()

    asyncio.run(fill())


@pytest.fixture
def long_queue(tmp_path: Path) -> Path:
    data = tmp_path / "node"
    data.mkdir()
    _fill_queue(data, messages=20, recipients=100)  # 2000 lines, ~400 KB: beyond a pipe
    return data


def test_mail_queue_piped_to_head_ends_quietly(long_queue: Path) -> None:
    cmd = " ".join([*MESH, "--data-dir", str(long_queue), "mail", "queue"])
    out = subprocess.run(
        f"{cmd} | head -n 1", shell=True, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.count("\n") == 1 and "attempts=0" in out.stdout
    assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr, out.stderr


@pytest.mark.parametrize("args", [("mail", "queue"), ("mail", "queue", "--json")])
def test_mail_queue_into_a_closed_pipe_exits_quietly(long_queue: Path, args: tuple[str]) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte
    try:
        out = subprocess.run(
            [*MESH, "--data-dir", str(long_queue), *args],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert out.returncode == 141, out.stderr
    assert out.stderr == "", out.stderr
