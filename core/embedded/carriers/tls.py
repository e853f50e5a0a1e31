"""``tls://HOST:PORT[?sni=NAME]``: TCP wrapped in TLS (yggdrasil ``link_tls.go``).

TLS is only a wrapper, as upstream: each node presents a self-signed certificate for
its own Ed25519 key, nobody verifies certificates, the peer's identity is the key
proven in the meta handshake (``?key=`` pins it). A dial sends SNI only when the URI
names a host (or ``?sni=``), never an IP literal.
"""

from __future__ import annotations

import asyncio

from ..links import LinkConnection, PeerURI
from . import CarrierEnv, Listener, NewLink
from .tcp import listen_stream

__all__ = ["TLSCarrier", "carrier"]


class TLSCarrier:
    scheme = "tls"
    can_listen = True

    async def dial(self, uri: PeerURI, conn: LinkConnection, env: CarrierEnv) -> None:
        await asyncio.get_running_loop().create_connection(
            lambda: conn,
            uri.host,
            uri.port,
            ssl=env.tls_contexts()[1],
            server_hostname=uri.sni or "",
            ssl_handshake_timeout=env.config.handshake_timeout,
        )

    async def listen(self, uri: PeerURI, new_link: NewLink, env: CarrierEnv) -> Listener:
        return await listen_stream(uri, new_link, server_tls=env.tls_contexts()[0])


def carrier(scheme: str) -> TLSCarrier:
    return TLSCarrier()
