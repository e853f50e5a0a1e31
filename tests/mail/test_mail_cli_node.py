"""`mesh mail ...` against a running node process (core.process.NodeProcess, the thing
behind `mesh up`) with the mail service plugged in the way the entry point does it:
the address and ports come from the node, the queue from its control API."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from apps.mail.passwords import set_password
from apps.mail.service import MailService, create_service
from core.config import NodeConfig
from core.identity import Identity, load_or_create_identity
from core.mailaddr import MailAddress
from core.process import NodeProcess
from core.service import ServicePlugin
from tests.mail.helpers import PASSWORD, wait_for
from tests.mail.test_mail_cli_commands import _run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[NodeProcess, Path]]:
    data = tmp_path / "node"
    identity, _ = load_or_create_identity(data)
    set_password(data, PASSWORD)
    port = _free_port()
    (data / "mesh.toml").write_text(f'[mail]\nsmtp = "127.0.0.1:{port}"\n')
    settings = {
        "smtp": f"127.0.0.1:{port}",
        "imap": "127.0.0.1:0",
        "io_timeout": 2,
        "retry_initial": 60,
        "retry_max": 60,
    }
    process = NodeProcess(
        NodeConfig(data_dir=data, backend="embedded"),
        identity,
        [ServicePlugin("mail", create_service)],
        {"mail": settings},
    )
    stop = asyncio.Event()
    task = asyncio.create_task(process.run(stop))
    try:
        await asyncio.wait_for(process.ready.wait(), 30)
        assert "mail" in process.services, process.failed
        yield process, data
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_address_send_and_queue_through_the_node(
    running: tuple[NodeProcess, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    process, data = running
    service = process.services["mail"]
    assert isinstance(service, MailService) and service.store is not None
    own = str(service.own)

    assert await asyncio.to_thread(_run, data, "mail", "address", "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["node"] == "running" and info["mail_address"] == own
    assert info["smtp_submission"] == f"127.0.0.1:{service.submission_port}"
    assert info["imap"] == f"127.0.0.1:{service.imap_port}"

    nobody = str(MailAddress(Identity.generate().public_key))
    code = await asyncio.to_thread(
        _run, data, "mail", "send", "--to", own, "--to", nobody, "--subject", "via mesh up",
        "--password-stdin", stdin=f"{PASSWORD}\nhello me\n",
    )  # fmt: skip
    assert code == 0
    capsys.readouterr()
    await wait_for("the mail to myself", lambda: service.store.count("INBOX"))  # type: ignore[union-attr]

    async def deferred() -> bool:
        assert service.queue is not None
        pending = await service.queue.pending()
        return bool(pending) and pending[0].last_error is not None

    await wait_for("the delivery to nobody to be deferred", deferred)
    assert await asyncio.to_thread(_run, data, "mail", "queue", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["recipient"] for r in rows] == [nobody]
    assert rows[0]["attempts"] == 1 and rows[0]["last_error"]
    status = await asyncio.to_thread(_run, data, "mail", "queue")
    assert status == 0 and nobody in capsys.readouterr().out
