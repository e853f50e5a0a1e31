"""Services that run inside the node process (mail, chat, call signaling).

An app declares itself under the ``meshsuite.services`` entry-point group, pointing
at a module (or object) with:

- ``create_service(node, config, data_dir) -> Service`` (required), where ``config``
  is the app's table from ``mesh.toml`` merged with ``mesh up`` flags;
- ``add_up_arguments(parser)`` (optional): flags the app adds to ``mesh up``;
- ``up_overrides(args) -> dict`` (optional): config values taken from those flags.

The service object follows :class:`Service`: ``start`` and ``close``, plus
``control_methods()`` (``{name: async handler(params)}``, served on the control API
under their names, prefixed with the app: ``mail.queue``) and ``endpoints()`` (what
``mesh status`` shows for it). :class:`BaseService` gives the two hooks empty defaults,
the way aiosmtpd documents its ``handle_*`` hooks.

A service that cannot start until the person does something (mail without a password)
raises :class:`core.errors.NeedsSetup`: the node logs it at INFO and ``mesh status``
shows ``needs setup``. Any other exception at load, create or start is a failure: the
node logs it with its traceback, shows it in ``mesh status`` and keeps running.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from core.node import Node

__all__ = [
    "BaseService",
    "ControlHandler",
    "ControlMethods",
    "Service",
    "ServicePlugin",
    "discover_services",
]

log = logging.getLogger(__name__)


ControlHandler = Callable[[dict[str, Any]], Awaitable[Any]]
ControlMethods = Mapping[str, ControlHandler]


@runtime_checkable
class Service(Protocol):
    """What the node process runs for an app."""

    async def start(self) -> None:
        """Listen and start background work; raise NeedsSetup or MeshError to refuse."""

    async def close(self) -> None:
        """Stop everything started; called once, also after a failed start."""

    def control_methods(self) -> ControlMethods:
        """Control-API methods, ``{"app.verb": async handler(params) -> JSON}``."""

    def endpoints(self) -> dict[str, Any]:
        """Where the service listens, for ``mesh status`` (``{"imap": "127.0.0.1:1143"}``)."""


class BaseService:
    """Defaults for the optional hooks: no control methods, no endpoints."""

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def control_methods(self) -> ControlMethods:
        return {}

    def endpoints(self) -> dict[str, Any]:
        return {}


ServiceFactory = Callable[["Node", Mapping[str, Any], Path], Service]


@dataclass(frozen=True)
class ServicePlugin:
    name: str
    create: ServiceFactory
    add_up_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    up_overrides: Callable[[argparse.Namespace], dict[str, Any]] | None = None


def discover_services() -> list[ServicePlugin]:
    """Every installed service plug-in, by name. One that fails to load is logged and
    kept as a plug-in whose creation raises that failure, so the node process reports it
    in ``mesh status`` like any other service that did not start."""
    plugins: list[ServicePlugin] = []
    for ep in sorted(entry_points(group="meshsuite.services"), key=lambda e: e.name):
        try:
            target = ep.load()
            create = getattr(target, "create_service", target)
            plugins.append(
                ServicePlugin(
                    name=ep.name,
                    create=create,
                    add_up_arguments=getattr(target, "add_up_arguments", None),
                    up_overrides=getattr(target, "up_overrides", None),
                )
            )
        except Exception as exc:
            log.error("service plug-in %s failed to load: %s", ep.name, exc, exc_info=True)
            plugins.append(ServicePlugin(name=ep.name, create=_unloadable(ep.name, exc)))
    return plugins


def _unloadable(name: str, exc: Exception) -> ServiceFactory:
    reason = f"plug-in failed to load: {type(exc).__name__}: {exc}"

    def create(node: Node, config: Mapping[str, Any], data_dir: Path) -> Service:
        raise PluginLoadError(reason)

    return create


class PluginLoadError(Exception):
    """The plug-in's entry point raised when it was imported."""
