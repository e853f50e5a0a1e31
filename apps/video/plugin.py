"""How calls plug into the node process: the ``meshsuite.services`` entry point.

Adds ``mesh up --ring contacts|everyone`` (the ``[video] ring`` setting of
``mesh.toml``); signaling listens on the mesh port 5311 (``[video] port``).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from apps.video.service import CallService

__all__ = ["add_up_arguments", "create_service", "up_overrides"]


def add_up_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("calls")
    group.add_argument(
        "--ring",
        choices=["contacts", "everyone"],
        help="who may ring this node: trusted contacts (default) or everyone not blocked",
    )


def up_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"ring": getattr(args, "ring", None)}


def create_service(node: Any, config: Mapping[str, Any], data_dir: Path) -> CallService:
    """The service; its module (and what it imports) loads only when a node runs it:
    `mesh --help` and every other CLI verb discover the plug-in without it."""
    from apps.video.service import create_service as create

    return create(node, config, data_dir)
