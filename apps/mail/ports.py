"""What the MTA needs from its collaborators, as protocols (no imports of the real parts).

:class:`apps.mail.store.MailStore` is a :class:`MailSink`; :class:`core.node.Node` is a
:class:`Connector`. Tests and the service pass the real objects.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable
from datetime import datetime
from typing import Protocol

__all__ = ["Connector", "KeyConnector", "MailSink"]


class MailSink(Protocol):
    async def deliver(
        self,
        mailbox: str,
        raw: bytes,
        *,
        flags: Iterable[str] = (),
        internal_date: datetime | None = None,
        dedup_key: str | None = None,
    ) -> int | None:
        """Store durably before returning; the new UID, or None for a known dedup key."""

    async def special_mailbox(self, use: str, default: str) -> str:
        """The name of the mailbox with special-use ``use`` (``default`` gets it if none)."""


class Connector(Protocol):
    async def open_connection(
        self, address: ipaddress.IPv6Address | str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A stream to ``[address]:port`` on the mesh."""


class KeyConnector(Protocol):
    """Yggmail's transport: a stream to a node by key (QUIC in raw session traffic)."""

    async def open_connection(
        self, key: bytes
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A new stream to the node whose Ed25519 key is ``key``."""
