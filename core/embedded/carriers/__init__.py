"""Carriers: what a peer link runs on, one module per URI scheme.

A carrier turns a :class:`~core.embedded.links.PeerURI` into connected
:class:`~core.embedded.links.LinkConnection`\\ s: :meth:`Carrier.dial` connects one
outbound link, :meth:`Carrier.listen` accepts inbound ones. Whatever the wire (a TCP
socket, TLS, one QUIC stream, WebSocket binary messages, an in-process pipe), the link
sees one ordered byte stream through an :class:`asyncio.Transport` and speaks the same
meta handshake and ironwood frames on it; admission, per-source caps and the handshake
deadline are the link's and the network's, so every carrier gets them.

:class:`CarrierRegistry` finds a carrier by scheme and imports its module only when a
URI first needs it (the QUIC and WebSocket libraries cost memory a tcp-only node never
pays). A new carrier is one new module here and one line in :data:`BUILTIN`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import ssl

    from ..config import NetworkConfig
    from ..links import LinkConnection, PeerURI

__all__ = [
    "BUILTIN",
    "Carrier",
    "CarrierEnv",
    "CarrierRegistry",
    "CarrierStats",
    "Listener",
    "NewLink",
    "UnknownScheme",
]

# scheme -> module (relative to this package) that defines ``carrier(scheme)``
BUILTIN: Mapping[str, str] = {
    "tcp": ".tcp",
    "tls": ".tls",
    "quic": ".quic",
    "ws": ".ws",
    "wss": ".ws",
}


class UnknownScheme(ValueError):
    """A URI names a scheme no carrier speaks; the message lists the ones that exist."""


class NewLink(Protocol):
    """Makes the inbound :class:`LinkConnection` for one accepted connection (the
    network's bookkeeping: meta bytes, pending set, close callbacks)."""

    def __call__(self, *, server_tls: ssl.SSLContext | None = None) -> LinkConnection: ...


class Listener(Protocol):
    """A running listener: :attr:`uri` is the bound URI (port 0 resolved)."""

    @property
    def uri(self) -> str: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


@dataclass(slots=True)
class CarrierStats:
    """What a carrier refused before a link existed, for ``mesh status`` and tests."""

    garbage: int = 0  # datagrams/requests that were not the protocol at all
    refused: int = 0  # well-formed attempts refused (caps, missing subprotocol, ...)
    oversize: int = 0  # messages over the carrier's size bound

    def to_json(self) -> dict[str, int]:
        return {"garbage": self.garbage, "refused": self.refused, "oversize": self.oversize}


@dataclass(slots=True)
class CarrierEnv:
    """What carriers share with their node: its key seed, its tunables, its TLS
    identity (built once, on first use) and per-scheme counters."""

    seed: bytes
    config: NetworkConfig
    stats: dict[str, CarrierStats] = field(default_factory=dict)
    _tls: tuple[ssl.SSLContext, ssl.SSLContext] | None = None

    def tls_contexts(self) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        """(server, client) contexts with our self-signed Ed25519 certificate."""
        if self._tls is None:
            from ..links import make_tls_contexts

            self._tls = make_tls_contexts(self.seed)
        return self._tls

    def stats_for(self, scheme: str) -> CarrierStats:
        return self.stats.setdefault(scheme, CarrierStats())


class Carrier(Protocol):
    scheme: str
    can_listen: bool

    async def dial(self, uri: PeerURI, conn: LinkConnection, env: CarrierEnv) -> None:
        """Connect ``conn`` to ``uri``: on return ``conn.connection_made`` has run with a
        transport carrying the link's bytes. Raises ``OSError`` (or ``TimeoutError``)
        when the carrier cannot connect; the caller bounds the whole call in time."""
        ...

    async def listen(self, uri: PeerURI, new_link: NewLink, env: CarrierEnv) -> Listener:
        """Accept links on ``uri``; each accepted connection gets ``new_link()``."""
        ...


class CarrierRegistry:
    """Carriers by scheme: the built-in ones (imported on first use) plus any given
    (the in-memory carrier of :mod:`core.testing`, a test's fake)."""

    def __init__(self, extra: Mapping[str, Carrier] | None = None) -> None:
        self._loaded: dict[str, Carrier] = dict(extra or {})
        self._modules = {s: m for s, m in BUILTIN.items() if s not in self._loaded}

    @property
    def schemes(self) -> tuple[str, ...]:
        known = [*self._modules, *self._loaded]
        return tuple(s for s in dict.fromkeys([*BUILTIN, *known]) if s in known)

    def __contains__(self, scheme: object) -> bool:
        return scheme in self._loaded or scheme in self._modules

    def get(self, scheme: str) -> Carrier:
        carrier = self._loaded.get(scheme)
        if carrier is not None:
            return carrier
        module = self._modules.get(scheme)
        if module is None:
            raise UnknownScheme(unknown_scheme_message(scheme, self.schemes))
        make: Callable[[str], Carrier] = importlib.import_module(module, __name__).carrier
        carrier = self._loaded[scheme] = make(scheme)
        return carrier


def unknown_scheme_message(scheme: str, schemes: tuple[str, ...] = tuple(BUILTIN)) -> str:
    return (
        f"unsupported link scheme {scheme!r}: the embedded node speaks "
        f"{', '.join(s + '://' for s in schemes)}"
    )
