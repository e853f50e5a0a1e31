"""Fixtures for the mail tests: one real embedded mesh for the whole run.

Starting an embedded node and waiting until the mesh routes to it takes seconds, so the
nodes are shared; tests start and stop mail services on them. A module that uses these
fixtures runs its tests in the session's event loop:
``pytestmark = pytest.mark.asyncio(loop_scope="session")``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from core.node import Node
from tests.mail.helpers import EmbeddedMesh, MailNode


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedMesh]:
    """Embedded nodes peered over loopback TCP with one hub, for the whole run."""
    async with EmbeddedMesh(tmp_path_factory.mktemp("mesh")) as mesh:
        yield mesh


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def mesh_nodes(mesh: EmbeddedMesh) -> list[Node]:
    """Three embedded nodes, each reachable from the others, shared by the tests
    (mail services start and stop on them per test)."""
    return await mesh.nodes(3)


@pytest_asyncio.fixture(loop_scope="session")
async def mail_pair(
    tmp_path: Path, mesh_nodes: list[Node]
) -> AsyncIterator[tuple[MailNode, MailNode]]:
    """Mail services A and B (fresh data dirs) on two shared nodes; A retries fast."""
    a = await MailNode.serve(mesh_nodes[0], tmp_path / "a", retry_initial=0.2, retry_max=0.5)
    try:
        b = await MailNode.serve(mesh_nodes[1], tmp_path / "b")
    except BaseException:
        await a.close()
        raise
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()
