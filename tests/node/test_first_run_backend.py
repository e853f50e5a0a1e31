"""The backend choice says every admin socket it tried (issue 14: Debian's path was
tried too but only one path was named)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.backends import select_backend
from core.backends.yggdrasil import backend as ygg_backend
from core.config import DEFAULT_ADMIN_ENDPOINT, NodeConfig
from core.identity import load_or_create_identity

DEBIAN = "unix:///var/run/yggdrasil/yggdrasil.sock"


def test_default_admin_sockets_include_debians() -> None:
    assert ygg_backend.endpoints_to_try(DEFAULT_ADMIN_ENDPOINT) == (
        DEFAULT_ADMIN_ENDPOINT,
        DEBIAN,
    )


async def test_auto_reason_names_every_admin_socket_tried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # stand-ins for the two default paths, so that a daemon on this machine cannot answer
    tried = (f"unix://{tmp_path}/upstream.sock", f"unix://{tmp_path}/debian.sock")
    monkeypatch.setattr(ygg_backend, "DEFAULT_ENDPOINTS", tried)
    identity, _ = load_or_create_identity(tmp_path / "data")
    config = NodeConfig(data_dir=tmp_path / "data", backend="auto")
    backend, reason = await select_backend(config, identity)
    assert backend.name == "embedded"
    assert reason == f"auto: no daemon at {tried[0]} or {tried[1]}, embedded node"


async def test_an_explicit_admin_socket_is_the_only_one_named(tmp_path: Path) -> None:
    endpoint = f"unix://{tmp_path}/mine.sock"
    identity, _ = load_or_create_identity(tmp_path / "data")
    config = NodeConfig(data_dir=tmp_path / "data", backend="auto", admin_endpoint=endpoint)
    _backend, reason = await select_backend(config, identity)
    assert reason == f"auto: no daemon at {endpoint}, embedded node"
    assert not os.path.exists(endpoint.removeprefix("unix://"))
