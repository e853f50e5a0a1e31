"""How chat plugs into the node process: the ``meshsuite.services`` entry point.

Chat listens on the mesh port 5310 (``[chat] port`` in ``mesh.toml``); undelivered
messages fail after ``[chat] expiry_days`` (30; ``mesh up --chat-expiry-days``).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from apps.chat.service import ChatService

__all__ = ["add_up_arguments", "create_service", "up_overrides"]


def add_up_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("chat")
    group.add_argument(
        "--chat-expiry-days",
        type=float,
        metavar="DAYS",
        help="an undelivered chat message fails after DAYS (default 30)",
    )


def up_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"expiry_days": getattr(args, "chat_expiry_days", None)}


def create_service(node: Any, config: Mapping[str, Any], data_dir: Path) -> ChatService:
    """The service; its module (and what it imports) loads only when a node runs it:
    `mesh --help` and every other CLI verb discover the plug-in without it."""
    from apps.chat.service import create_service as create

    return create(node, config, data_dir)
