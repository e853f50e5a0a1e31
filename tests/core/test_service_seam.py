"""The service seam: plug-ins that fail to load, to be created or to start are reported in
`status` and the log while the node and the other services keep running; a service that
needs setup is not an error; control methods come from the typed Service protocol."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from core.config import NodeConfig
from core.control.client import ControlClient
from core.errors import NeedsSetup
from core.identity import load_or_create_identity
from core.node import Node
from core.process import NodeProcess
from core.service import BaseService, ControlMethods, Service, ServicePlugin, discover_services


class Good(BaseService):
    def __init__(self) -> None:
        self.closed = False

    def control_methods(self) -> ControlMethods:
        async def hello(params: dict[str, Any]) -> str:
            return f"hello {params.get('name', 'world')}"

        return {"good.hello": hello}

    def endpoints(self) -> dict[str, Any]:
        return {"port": 1}

    async def close(self) -> None:
        self.closed = True


class Crashes(BaseService):
    closed = False

    async def start(self) -> None:
        raise RuntimeError("boom at start")

    async def close(self) -> None:
        Crashes.closed = True


class WantsSetup(BaseService):
    async def start(self) -> None:
        raise NeedsSetup("needs a password: run `mesh demo passwd`")


def _plugin(name: str, make: Any) -> ServicePlugin:
    def create(node: Node, config: Mapping[str, Any], data_dir: Path) -> Service:
        service: Service = make()
        return service

    return ServicePlugin(name, create)


def _raises_at_create(node: Node, config: Mapping[str, Any], data_dir: Path) -> Service:
    raise ValueError("bad config value")


@pytest.fixture
async def process(tmp_path: Path) -> AsyncIterator[NodeProcess]:
    data = tmp_path / "node"
    identity, _ = load_or_create_identity(data)
    plugins = [
        _plugin("crashes", Crashes),
        ServicePlugin("badconfig", _raises_at_create),
        _plugin("setup", WantsSetup),
        _plugin("good", Good),
    ]
    proc = NodeProcess(NodeConfig(data_dir=data, backend="embedded"), identity, plugins, {})
    stop = asyncio.Event()
    task = asyncio.create_task(proc.run(stop))
    try:
        await asyncio.wait_for(proc.ready.wait(), 30)
        yield proc
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@pytest.mark.timeout(60)
async def test_failing_plugins_show_in_status_and_the_node_keeps_serving(
    process: NodeProcess, caplog: pytest.LogCaptureFixture
) -> None:
    assert process.control is not None
    async with await ControlClient.connect(process.control.path) as client:
        status = await client.call("status")
        services = status["services"]
        assert services["crashes"] == {"not running": "RuntimeError: boom at start"}
        assert services["badconfig"] == {"not running": "ValueError: bad config value"}
        assert services["setup"] == {"needs setup": "needs a password: run `mesh demo passwd`"}
        assert services["good"] == {"port": 1}
        assert await client.call("good.hello", name="mesh") == "hello mesh"
    assert Crashes.closed, "a service whose start failed is closed"


@pytest.mark.timeout(60)
async def test_needing_setup_is_logged_at_info_not_as_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "node"
    identity, _ = load_or_create_identity(data)
    proc = NodeProcess(
        NodeConfig(data_dir=data, backend="embedded"), identity, [_plugin("setup", WantsSetup)], {}
    )
    stop = asyncio.Event()
    with caplog.at_level(logging.INFO, logger="core.process"):
        task = asyncio.create_task(proc.run(stop))
        await asyncio.wait_for(proc.ready.wait(), 30)
        stop.set()
        await asyncio.wait_for(task, 30)
    setup = [r for r in caplog.records if "setup" in r.getMessage()]
    assert setup and all(r.levelno == logging.INFO for r in setup)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_plugin_that_fails_to_load_becomes_a_service_that_reports_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class BrokenEntryPoint:
        name = "broken"

        def load(self) -> Any:
            raise ImportError("No module named 'apps.broken'")

    import core.service as service_module

    monkeypatch.setattr(service_module, "entry_points", lambda group: [BrokenEntryPoint()])
    (plugin,) = discover_services()
    assert plugin.name == "broken"
    with pytest.raises(Exception, match="failed to load: ImportError"):
        plugin.create(None, {}, Path("."))  # type: ignore[arg-type]


def test_the_installed_services_satisfy_the_typed_protocol() -> None:
    for plugin in discover_services():
        assert callable(plugin.create), plugin.name
    assert isinstance(Good(), Service)
