"""The aiosmtpd server protocol as the mail service runs it, plus connection limits.

aiosmtpd keeps a message's DATA in memory until the end, so the number of connections is
what bounds memory: :class:`ConnectionLimiter` caps them per peer address and in total;
a connection over the cap gets ``421`` and is closed before the greeting.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiosmtpd.smtp import SMTP, Session

from core import ConnectionLimiter, peer_address, peer_key

__all__ = ["MeshSMTP", "YggmailSMTP", "ehlo_with_pipelining"]

log = logging.getLogger(__name__)


def ehlo_with_pipelining(session: Any, hostname: str, responses: list[str]) -> list[str]:
    """The EHLO reply plus ``PIPELINING`` (RFC 2920), for a handler's ``handle_EHLO``.

    aiosmtpd reads commands in order from its stream buffer, so a client may send
    ``MAIL``, its ``RCPT``s and ``DATA`` in one flight and read the replies after: two
    round trips per message instead of four, which is what a mesh path's latency
    charges for. aiosmtpd does not advertise the extension itself; with a hook, setting
    the session's host name is the hook's job.
    """
    session.host_name = hostname
    return [*responses[:-1], "250-PIPELINING", responses[-1]]


class _Session(Session):
    """aiosmtpd's session without the deprecation warning it logs on every login."""

    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


class MeshSMTP(SMTP):
    """aiosmtpd's SMTP with an optional :class:`ConnectionLimiter`."""

    def __init__(self, handler: Any, *, limiter: ConnectionLimiter | None = None, **kw: Any):
        super().__init__(handler, **kw)
        self._limiter = limiter
        self._limited_peer: str | None = None
        self._refused = False

    def _create_session(self) -> Session:
        return _Session(self.loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._limiter is not None and self._limited_peer is None:
            address = peer_address(transport)  # the authenticated one, scope id stripped
            key = peer_key(transport)  # a QUIC stream has a key and no address
            name = str(address) if address is not None else key.hex() if key else "?"
            if not self._limiter.acquire(name):
                log.warning("smtp: refused a connection from [%s]: too many open", name)
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(b"421 4.7.0 too many connections from you; try again later\r\n")
                transport.close()
                self._refused = True
                return
            self._limited_peer = name
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self._limiter is not None and self._limited_peer is not None:
            self._limiter.release(self._limited_peer)
            self._limited_peer = None
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        if self._refused:
            return False
        result: bool | None = super().eof_received()
        return result


class YggmailSMTP(MeshSMTP):
    """:class:`MeshSMTP` for one QUIC stream from a Yggmail node.

    A QUIC stream exists for its peer only once data flows, so Yggmail's client writes
    one space before it has read the greeting: its first command arrives as
    ``" EHLO <hex>"``. Spaces before the first command are dropped here (Yggmail's own
    server refuses that line and its client falls back to HELO; we answer EHLO).
    """

    _started = False

    def data_received(self, data: bytes) -> None:
        if not self._started:
            data = data.lstrip(b" ")
            if not data:
                return
            self._started = True
        super().data_received(data)
