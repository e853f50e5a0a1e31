"""``tcp://HOST:PORT``: the link's bytes straight on a TCP socket (yggdrasil ``link_tcp.go``)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass

from ..links import LinkConnection, PeerURI
from . import CarrierEnv, Listener, NewLink

__all__ = ["ServerListener", "TCPCarrier", "carrier", "listen_stream"]


@dataclass(slots=True)
class ServerListener:
    """An :class:`asyncio.Server` as a :class:`~core.embedded.carriers.Listener`."""

    server: asyncio.Server
    uri: str

    def close(self) -> None:
        self.server.close()

    async def wait_closed(self) -> None:
        await self.server.wait_closed()


async def listen_stream(
    uri: PeerURI, new_link: NewLink, server_tls: ssl.SSLContext | None = None
) -> ServerListener:
    """A TCP listener whose every accepted socket is a new link (TLS, if any, is started
    by the link itself once admitted, so the handshake deadline covers it)."""
    server = await asyncio.get_running_loop().create_server(
        lambda: new_link(server_tls=server_tls),
        uri.host,
        uri.port,
        backlog=socket.SOMAXCONN,  # as Go's net.Listen (yggdrasil-go): the kernel's cap
    )
    host, port = server.sockets[0].getsockname()[:2]
    return ServerListener(server, PeerURI(uri.scheme, host, port).base)


class TCPCarrier:
    scheme = "tcp"
    can_listen = True

    async def dial(self, uri: PeerURI, conn: LinkConnection, env: CarrierEnv) -> None:
        await asyncio.get_running_loop().create_connection(lambda: conn, uri.host, uri.port)

    async def listen(self, uri: PeerURI, new_link: NewLink, env: CarrierEnv) -> Listener:
        return await listen_stream(uri, new_link)


def carrier(scheme: str) -> TCPCarrier:
    return TCPCarrier()
