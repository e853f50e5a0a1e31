"""Mail end to end on the embedded backend: between two embedded nodes (the run's shared
ones, see conftest.py), and between an embedded node and a daemon host in the lab. The
same checks as the daemon lab's (``test_mail_e2e_lab``): smtplib submits, imaplib reads,
the mesh leg is real Yggdrasil.
"""

from __future__ import annotations

import asyncio
import email
from collections.abc import AsyncIterator, Iterator
from email.policy import default
from pathlib import Path
from typing import Any

import pytest

from apps.mail.passwords import set_password
from core.config import NodeConfig
from core.identity import Identity
from core.node import Node
from tests.lab.fixtures import RootLinked, root_linked_daemon
from tests.mail.helpers import PASSWORD, on_shared_mesh, reachable, wait_for
from tests.mail.test_mail_e2e_lab import LabMail, _imap_fetch_all, _message, _submit


class EmbeddedMail(LabMail):
    """An embedded node in this process with the mail service on it."""

    @classmethod
    async def embedded(cls, data_dir: Path, **node: Any) -> EmbeddedMail:
        data_dir.mkdir(parents=True, exist_ok=True)
        set_password(data_dir, PASSWORD)
        config = NodeConfig(data_dir=data_dir, backend="embedded", **node)
        return await cls.adopt(await Node.open(config, Identity.generate()), data_dir)


async def _reachable(src: LabMail, dst: LabMail) -> None:
    await reachable(src.node, dst.node)


async def _mail_round_trip(a: LabMail, b: LabMail) -> None:
    assert a.service.submission_port and b.service.imap_port
    msg = _message(a.address, [b.address], "embedded mesh mail")
    await asyncio.to_thread(_submit, a.service.submission_port, a.address, msg, [b.address])
    await wait_for("the mail at B", lambda: b.store.count("INBOX"), timeout=60)
    raws = await asyncio.to_thread(_imap_fetch_all, b.service.imap_port, b.address)
    got = email.message_from_bytes(raws[-1], policy=default)
    assert got["Subject"] == "embedded mesh mail" and got["From"] == a.address
    received = str(got["Received"])
    assert f"[{a.node.address}]" in received and f"[{b.node.address}]" in received
    att = next(got.iter_attachments())
    assert att.get_content() == bytes(range(256)) * 64
    reply = _message(b.address, [a.address, b.address], "Re: embedded mesh mail")
    before_a = await a.store.count("INBOX")
    await asyncio.to_thread(
        _submit, b.service.submission_port, b.address, reply, [a.address, b.address]
    )
    await wait_for("the reply at A", lambda: _more(a, before_a), timeout=60)
    await wait_for("B's copy to itself", lambda: _at_least(b, 2), timeout=30)


async def _more(node: LabMail, before: int) -> bool:
    return await node.store.count("INBOX") > before


async def _at_least(node: LabMail, n: int) -> bool:
    return await node.store.count("INBOX") >= n


@on_shared_mesh
async def test_mail_between_two_embedded_nodes(tmp_path: Path, mesh_nodes: list[Node]) -> None:
    a = await EmbeddedMail.serve(mesh_nodes[0], tmp_path / "a")
    try:
        b = await EmbeddedMail.serve(mesh_nodes[1], tmp_path / "b")
        try:
            await _mail_round_trip(a, b)
        finally:
            await b.close()
    finally:
        await a.close()


@pytest.fixture(scope="module")
def lab_with_root_link() -> Iterator[RootLinked]:
    with root_linked_daemon("mse", 0xED, 7001) as lab:
        yield lab


@pytest.fixture
async def mixed(
    lab_with_root_link: RootLinked, tmp_path: Path
) -> AsyncIterator[tuple[LabMail, LabMail]]:
    on_daemon = await LabMail.on_host(lab_with_root_link.host, tmp_path / "d")
    try:
        embedded = await EmbeddedMail.embedded(tmp_path / "e", peers=(lab_with_root_link.uri,))
    except BaseException:
        await on_daemon.close()
        raise
    try:
        await _reachable(embedded, on_daemon)
        yield embedded, on_daemon
    finally:
        await embedded.close()
        await on_daemon.close()


@pytest.mark.lab
async def test_mail_from_embedded_node_to_daemon_host_and_back(
    mixed: tuple[LabMail, LabMail],
) -> None:
    embedded, on_daemon = mixed
    await _mail_round_trip(embedded, on_daemon)


@pytest.mark.lab
async def test_mail_from_daemon_host_to_embedded_node_and_back(
    mixed: tuple[LabMail, LabMail],
) -> None:
    embedded, on_daemon = mixed
    await _mail_round_trip(on_daemon, embedded)
