"""Services that run inside the node process (mail, chat, call signaling).

An app declares itself under the ``meshsuite.services`` entry-point group, pointing
at a module (or object) with:

- ``create_service(node, config, data_dir) -> Service`` (required), where ``config``
  is the app's table from ``mesh.toml`` merged with ``mesh up`` flags;
- ``add_up_arguments(parser)`` (optional): flags the app adds to ``mesh up``;
- ``up_overrides(args) -> dict`` (optional): config values taken from those flags.

A service may expose ``control_methods() -> {name: async handler(params)}``; they are
served on the control API under their names (prefix them with the app, ``mail.queue``).
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

__all__ = ["Service", "ServicePlugin", "discover_services"]

log = logging.getLogger(__name__)


@runtime_checkable
class Service(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...


ServiceFactory = Callable[["Node", Mapping[str, Any], Path], Service]
ControlMethods = Mapping[str, Callable[[dict[str, Any]], Awaitable[Any]]]


@dataclass(frozen=True)
class ServicePlugin:
    name: str
    create: ServiceFactory
    add_up_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    up_overrides: Callable[[argparse.Namespace], dict[str, Any]] | None = None


def discover_services() -> list[ServicePlugin]:
    """Every installed service plug-in, by name; a broken one is logged and skipped."""
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
            log.warning("service plug-in %s failed to load: %s", ep.name, exc)
    return plugins
