"""How mail plugs into the node process: the ``meshsuite.services`` entry point.

Adds ``mesh up --smtp HOST:PORT --imap HOST:PORT`` and maps them onto the ``[mail]``
table of ``mesh.toml``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from apps.mail.service import MailService

__all__ = ["add_up_arguments", "create_service", "up_overrides"]


def add_up_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("mail")
    group.add_argument(
        "--smtp", metavar="HOST:PORT", help="submission SMTP (default 127.0.0.1:1025)"
    )
    group.add_argument("--imap", metavar="HOST:PORT", help="IMAP (default 127.0.0.1:1143)")


def up_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"smtp": getattr(args, "smtp", None), "imap": getattr(args, "imap", None)}


def create_service(node: Any, config: Mapping[str, Any], data_dir: Path) -> MailService:
    """The service; its module (and what it imports) loads only when a node runs it:
    `mesh --help` and every other CLI verb discover the plug-in without it."""
    from apps.mail.service import create_service as create

    return create(node, config, data_dir)
