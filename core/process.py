"""The node process behind `mesh up`: node + services + control API, one owner."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from core.backend import NodeEvent
from core.config import NodeConfig
from core.contacts import contact_methods
from core.control.server import ControlServer
from core.errors import MeshError, NeedsSetup, UsageError
from core.forwarding import ForwardingConfig, ForwardingService
from core.identity import Identity
from core.node import Node
from core.relay.config import RelayConfig
from core.relay.service import RelayService
from core.service import Service, ServicePlugin

__all__ = ["NodeProcess"]

log = logging.getLogger(__name__)

NodeOpener = Callable[[NodeConfig, Identity | None], Awaitable[Node]]


class NodeProcess:
    """Starts everything in order, stops it in reverse, whatever fails in between."""

    def __init__(
        self,
        config: NodeConfig,
        identity: Identity | None,
        plugins: list[ServicePlugin],
        service_configs: Mapping[str, Mapping[str, Any]],
        forwarding: ForwardingConfig | None = None,
        *,
        open_node: NodeOpener | None = None,
    ) -> None:
        self.forwarding_config = forwarding or ForwardingConfig()
        self._open_node: NodeOpener = open_node or Node.open  # tests: core.testing.MemMesh
        self.config = config
        self.identity = identity
        self.plugins = plugins
        self.service_configs = service_configs
        self.node: Node | None = None
        self.services: dict[str, Service] = {}
        self.failed: dict[str, dict[str, str]] = {}
        self.control: ControlServer | None = None
        self.ready = asyncio.Event()
        self._started = time.monotonic()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self._start()
            self.ready.set()
            await stop.wait()
        finally:
            await self._stop()

    async def _start(self) -> None:
        self.node = node = await self._open_node(self.config, self.identity)
        self.control = ControlServer(self.config.control_socket, node.events)
        self._register_core_methods(self.control, node)
        forwarding = ForwardingService(node, self.forwarding_config, node.config.data_dir)
        await forwarding.start()
        self.services["forwarding"] = forwarding
        forwarding.register_control(self.control)
        await self._start_relay(node, self.control)
        for plugin in self.plugins:
            await self._start_service(plugin, node, self.control)
        await self.control.start()
        node.events.publish(NodeEvent("node.up", {"address": str(node.address)}))

    async def _start_relay(self, node: Node, control: ControlServer) -> None:
        """The relay service (core.relay): before the apps, which hand off and fetch
        through it (``node.relay``). If it cannot start, the apps deliver directly only."""
        relay: RelayService | None = None
        try:
            config = RelayConfig.from_mapping(self.config.service("relay"))
            relay = RelayService(node, config, node.config.data_dir)
            await relay.start()
        except (MeshError, OSError) as exc:
            log.error("relay service not started: %s", exc)
            self.failed["relay"] = {"not running": str(exc)}
            await _close_quietly("relay", relay)
            return
        self.services["relay"] = relay
        node.relay = relay
        for name, handler in relay.control_methods().items():
            control.register(name, handler)

    async def _start_service(
        self, plugin: ServicePlugin, node: Node, control: ControlServer
    ) -> None:
        """Create and start one plug-in; whatever goes wrong, the node keeps running and
        ``mesh status`` says why the service is not there."""
        config = self.service_configs.get(plugin.name, {})
        service: Service | None = None
        try:
            service = plugin.create(node, config, node.config.data_dir)
            await service.start()
            methods = dict(service.control_methods())
            for name in methods:
                if name in control.methods:
                    raise MeshError(f"control method {name!r} is already taken")
        except NeedsSetup as exc:
            log.info("service %s needs setup: %s", plugin.name, exc)
            self.failed[plugin.name] = {"needs setup": str(exc)}
            await _close_quietly(plugin.name, service)
            return
        except MeshError as exc:
            log.error("service %s not started: %s", plugin.name, exc)
            self.failed[plugin.name] = {"not running": str(exc)}
            await _close_quietly(plugin.name, service)
            return
        except Exception as exc:
            log.exception("service %s failed to start", plugin.name)
            self.failed[plugin.name] = {"not running": f"{type(exc).__name__}: {exc}"}
            await _close_quietly(plugin.name, service)
            return
        self.services[plugin.name] = service
        for name, handler in methods.items():
            control.register(name, handler)
        log.info("service %s started", plugin.name)

    async def _stop(self) -> None:
        if self.control is not None:
            await self.control.close()
        for name, service in reversed(list(self.services.items())):
            try:
                await service.close()
            except Exception:
                log.exception("service %s failed to close cleanly", name)
        self.services.clear()
        if self.node is not None:
            await self.node.close()

    def _register_core_methods(self, control: ControlServer, node: Node) -> None:
        async def status(params: dict[str, Any]) -> dict[str, Any]:
            info = await node.status()
            info["uptime"] = round(time.monotonic() - self._started, 1)
            info["control_socket"] = str(control.path)
            info["services"] = {
                name: _endpoints(service) for name, service in self.services.items()
            }
            for name, state in self.failed.items():
                info["services"][name] = state
            return info

        async def peers(params: dict[str, Any]) -> list[dict[str, Any]]:
            return [p.to_json() for p in await node.peers()]

        async def add_peer(params: dict[str, Any]) -> dict[str, Any]:
            await node.add_peer(_uri(params))
            return {"added": params["uri"]}

        async def remove_peer(params: dict[str, Any]) -> dict[str, Any]:
            await node.remove_peer(_uri(params))
            return {"removed": params["uri"]}

        async def ping(params: dict[str, Any]) -> dict[str, Any]:
            target = str(params["target"])
            count = int(params.get("count", 4))
            if count > 1000:
                raise UsageError("ping: at most 1000 probes per request")
            rtts = await node.ping(
                target,
                count=count,
                interval=float(params.get("interval", 1.0)),
                timeout=float(params.get("timeout", 5.0)),
            )
            return {"target": target, "rtts": rtts}

        async def methods(params: dict[str, Any]) -> list[str]:
            return control.methods

        for name, handler in {
            "status": status,
            "peers": peers,
            "peers.add": add_peer,
            "peers.remove": remove_peer,
            "ping": ping,
            "methods": methods,
            **contact_methods(node.contacts),
        }.items():
            control.register(name, handler)


def _uri(params: dict[str, Any]) -> str:
    uri = params.get("uri")
    if not isinstance(uri, str) or "://" not in uri:
        raise UsageError(
            "a peer URI looks like tls://host:port, tcp://[addr]:port, quic://host:port "
            "or ws://host:port/path"
        )
    return uri


def _endpoints(service: Service) -> Any:
    try:
        return service.endpoints()
    except Exception as exc:
        log.exception("service endpoints() failed")
        return {"error": f"endpoints() failed: {exc}"}


async def _close_quietly(name: str, service: Service | None) -> None:
    if service is None:
        return
    try:
        await service.close()
    except Exception:
        log.exception("service %s failed to close after a failed start", name)


async def run_until_signal(process: NodeProcess) -> None:
    """Run ``process`` until SIGINT/SIGTERM."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await process.run(stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
