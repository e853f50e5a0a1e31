"""Peer links (yggdrasil ``src/core/link.go``): URIs and the link protocol on a byte stream.

A link is a byte stream: both ends first send the meta handshake
(:mod:`core.embedded.meta`), then ironwood frames. What carries the stream (TCP, TLS,
a QUIC stream, WebSocket messages, an in-process pipe) is a carrier
(:mod:`core.embedded.carriers`), found by the URI's scheme. The peer's identity is the
key proven in the handshake; ``?key=<hex>`` pins the expected key (checked after the
handshake).

:class:`LinkConnection` is the thin :class:`asyncio.Protocol`; everything it learns it
reports to its :class:`LinkOwner` (the :class:`~core.embedded.network.PacketNetwork`).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import os
import ssl
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from .carriers import BUILTIN, UnknownScheme, unknown_scheme_message
from .meta import MAX_PASSWORD, HandshakeError, Meta, MetaReader

__all__ = [
    "LinkConnection",
    "LinkOwner",
    "PeerURI",
    "make_tls_contexts",
    "parse_peer_uri",
    "self_signed_certificate",
]

log = logging.getLogger(__name__)

SCHEMES = tuple(BUILTIN)
# Held before our side of the handshake is sent: a remote meta (a few hundred bytes) and
# whatever frames a fast peer sends right after it.
EARLY_LIMIT = 64 * 1024
# Stream reads land in one buffer per link, reused for every read (asyncio's default is
# a fresh 256 KiB bytes object per read, an mmap and munmap each time). As large as
# asyncio's reads once the link is up (a bulk transfer's frames are up to 128 KiB);
# small while a connection is still handshaking (a flood of them costs little).
RECV_BUFFER = 256 * 1024
HANDSHAKE_RECV_BUFFER = 4 * 1024


@dataclass(frozen=True, slots=True)
class PeerURI:
    """A parsed peering/listen URI (``links.add`` / ``links.listen`` options)."""

    scheme: str
    host: str
    port: int
    password: bytes = b""
    priority: int = 0
    pinned_keys: frozenset[bytes] = frozenset()
    sni: str | None = None
    max_backoff: float | None = None
    path: str = ""  # ws:// and wss:// only: the HTTP path ("" is "/")
    origins: tuple[str, ...] = ()  # ws:// listeners: ?origin= (upstream's OriginPatterns)

    @property
    def hostport(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def base(self) -> str:
        """The URI without its query (yggdrasil ``urlForLinkInfo``)."""
        return f"{self.scheme}://{self.hostport}{self.path}"


def parse_peer_uri(uri: str, schemes: Collection[str] = SCHEMES) -> PeerURI:
    """Parse ``tcp://host:port?password=..&key=..&priority=..``; ValueError says what's wrong
    (:class:`~core.embedded.carriers.UnknownScheme` for a scheme not in ``schemes``)."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid peer URI {uri!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        raise UnknownScheme(f"{unknown_scheme_message(parts.scheme, tuple(schemes))} (in {uri!r})")
    if not parts.hostname or port is None:
        raise ValueError(f"peer URI {uri!r} needs a host and a port, e.g. tcp://[::1]:12345")
    query = parse_qs(parts.query, keep_blank_values=True)
    password = (query.get("password") or [""])[0].encode()
    if len(password) > MAX_PASSWORD:
        raise ValueError(f"password in {uri!r} is longer than {MAX_PASSWORD} bytes")
    prio_text = (query.get("priority") or ["0"])[0] or "0"
    if not prio_text.isdigit() or int(prio_text) > 255:
        raise ValueError(f"priority in {uri!r} must be 0..255")
    keys: set[bytes] = set()
    for text in query.get("key", []):
        try:
            key = bytes.fromhex(text)
        except ValueError:
            key = b""
        if len(key) != 32:
            raise ValueError(f"pinned key {text!r} in {uri!r} is not 64 hex characters")
        keys.add(key)
    sni = (query.get("sni") or [""])[0] or None
    if sni is None and not _is_ip(parts.hostname):
        sni = parts.hostname
    backoff = None
    if "maxbackoff" in query:
        backoff = _parse_duration(query["maxbackoff"][0], uri)
    path = ""  # other schemes ignore a path, as upstream
    if scheme in ("ws", "wss") and parts.path not in ("", "/"):
        path = parts.path
    origins = tuple(o for o in query.get("origin", []) if o)
    return PeerURI(
        scheme, parts.hostname, port, password, int(prio_text), frozenset(keys), sni, backoff,
        path, origins,
    )  # fmt: skip


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def _parse_duration(text: str, uri: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix):
            try:
                value = float(text[: -len(suffix)]) * units[suffix]
            except ValueError:
                break
            if value < 5:  # yggdrasil-go 0.5.13 lowered it from 30 s
                raise ValueError(f"maxbackoff in {uri!r} must be at least 5s")
            return value
    raise ValueError(f"maxbackoff in {uri!r} must be a duration like 5s, 30s or 5m")


def self_signed_certificate(private_seed: bytes) -> tuple[x509.Certificate, Ed25519PrivateKey]:
    """A self-signed certificate for our Ed25519 key (CN = the key in hex), as
    yggdrasil-go's ``generateSelfSignedCertificate``; nobody verifies it."""
    sk = Ed25519PrivateKey.from_private_bytes(private_seed)
    pub_hex = (
        sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).hex()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, pub_hex)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(sk.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(sk, None)
    )
    return cert, sk


def make_tls_contexts(private_seed: bytes) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Server and client contexts with a self-signed certificate for our Ed25519 key."""
    cert, sk = self_signed_certificate(private_seed)
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = sk.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    for ctx in (server, client):
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # ssl can only load a chain from files: write them privately, load, delete.
    with tempfile.TemporaryDirectory(prefix="meshsuite-tls-") as tmp:
        cert_path = os.path.join(tmp, "cert.pem")
        key_path = os.path.join(tmp, "key.pem")
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
        with open(cert_path, "wb") as f:
            f.write(cert_pem)
        server.load_cert_chain(cert_path, key_path)
        client.load_cert_chain(cert_path, key_path)
    return server, client


class LinkOwner(Protocol):
    """What a link reports to (the network)."""

    def link_admit(self, conn: LinkConnection) -> bool:
        """An inbound connection was accepted: may it go on? (False: it is dropped at once,
        before any TLS or meta work.)"""
        ...

    def link_up(self, conn: LinkConnection, meta: Meta) -> bool: ...

    def link_data(self, conn: LinkConnection, data: bytes | memoryview) -> None:
        """Stream bytes of an established link; ``data`` is valid only during the call
        (a view of the link's receive buffer): keep a copy, not the view."""
        ...

    def link_down(self, conn: LinkConnection, error: str | None) -> None: ...

    def link_writable(self, conn: LinkConnection) -> None: ...


class LinkConnection(asyncio.BufferedProtocol, asyncio.Protocol):
    """One carrier connection: handshake first, then frames handed to the owner.

    The handshake deadline (``handshake_timeout``, yggdrasil-go's 6 s ``SetDeadline``)
    runs from the moment the socket is accepted or connected and covers the TLS
    handshake too. An inbound ``tls://`` connection is accepted as plain TCP and
    upgraded here with :meth:`asyncio.loop.start_tls` (``server_tls``), so the raw
    socket is ours from the first byte: a peer that never finishes TLS is aborted at
    the deadline and :attr:`closed` resolves on every path (asyncio itself never calls
    ``connection_lost`` for a protocol whose TLS handshake did not finish).

    Socket carriers (tcp, tls) read into one reused buffer (``BufferedProtocol``);
    carriers that hand over bytes themselves (mem, quic) call :meth:`data_received`.
    """

    def __init__(
        self,
        owner: LinkOwner,
        *,
        meta_bytes: bytes,
        uri: PeerURI,
        inbound: bool,
        local_key: bytes,
        handshake_timeout: float,
        write_high_water: int = 256 * 1024,
        server_tls: ssl.SSLContext | None = None,
    ) -> None:
        self._owner = owner
        self._meta_bytes = meta_bytes
        self.uri = uri
        self.inbound = inbound
        self._local_key = local_key
        self._handshake_timeout = handshake_timeout
        self._high_water = write_high_water
        self._server_tls = server_tls
        self._reader = MetaReader(uri.password)
        self._raw: asyncio.Transport | None = None
        self._tls_task: asyncio.Task[None] | None = None
        # Bytes that arrive before :meth:`_begin` (an inbound TLS upgrade hands the first
        # decrypted bytes to data_received before start_tls returns): held, bounded, then
        # read in order once our own meta is sent.
        self._early = bytearray()
        self._recv = memoryview(bytearray(HANDSHAKE_RECV_BUFFER))
        self.transport: asyncio.Transport | None = None
        self.meta: Meta | None = None
        self.remote = ""
        self.source: str | None = None  # the remote IP (inbound admission, per-source caps)
        self.admitted = False
        self.established = False
        self.to_self = False
        self.paused = False
        self.error: str | None = None
        self.closed: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        loop = asyncio.get_running_loop()
        self._raw = transport
        peer = transport.get_extra_info("peername")
        if peer:
            host = str(peer[0])
            self.source = host.split("%", 1)[0]
            self.remote = f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
        if self.inbound:
            if not self._owner.link_admit(self):
                self.error = "refused"
                transport.abort()  # nothing sent, nothing logged per connection
                return
            self.admitted = True
        self._timer = loop.call_later(self._handshake_timeout, self._on_handshake_timeout)
        if self._server_tls is not None:
            transport.pause_reading()  # start_tls takes over the raw stream from here
            self._tls_task = loop.create_task(
                self._start_tls(transport, self._server_tls), name=f"tls from {self.remote}"
            )
        else:
            self._begin(transport)

    async def _start_tls(self, raw: asyncio.Transport, ctx: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(
                raw, self, ctx, server_side=True, ssl_handshake_timeout=self._handshake_timeout
            )
        except (OSError, EOFError) as exc:  # ssl.SSLError and timeouts are OSErrors
            raw.abort()
            self._finish(f"TLS handshake failed: {exc or type(exc).__name__}")
            return
        except asyncio.CancelledError:
            raw.abort()
            self._finish(self.error or "closed during the TLS handshake")
            raise
        finally:
            self._tls_task = None
        if tls is None or self.closed.done():
            raw.abort()
            return
        self._begin(tls)

    def _begin(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        # pause_writing above our high water, resume_writing (-> owner flushes) below
        transport.set_write_buffer_limits(high=self._high_water)
        transport.write(self._meta_bytes)
        if self._early:
            early, self._early = bytes(self._early), bytearray()
            self.data_received(early)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.established and len(self._recv) < RECV_BUFFER:
            self._recv = memoryview(bytearray(RECV_BUFFER))
        return self._recv

    def buffer_updated(self, nbytes: int) -> None:
        view = self._recv[:nbytes]
        # An established link's bytes are consumed during the call (the frame decoder
        # copies what it keeps): no copy here. The handshake gets its own bytes.
        self.data_received(view if self.established else bytes(view))

    def data_received(self, data: bytes | memoryview) -> None:
        """Bytes from the carrier (the memory and quic carriers call this directly)."""
        if self.transport is None:
            # The TLS layer delivers what followed its handshake before start_tls has
            # returned: the link is not ours to use yet (no transport, our meta unsent).
            # Nothing is dropped and nothing is answered until _begin.
            if self._raw is None:
                return  # already finished
            self._early += data
            if len(self._early) > EARLY_LIMIT:
                self.fail(f"more than {EARLY_LIMIT} bytes before the handshake")
            return
        if self.established:
            self._owner.link_data(self, data)
            return
        try:
            meta = self._reader.feed(bytes(data))
        except HandshakeError as exc:
            self.fail(f"handshake refused: {exc}")
            return
        if meta is None:
            return
        self._cancel_timer()
        if self.uri.pinned_keys and meta.public_key not in self.uri.pinned_keys:
            self.fail(f"node key {meta.public_key.hex()} does not match the pinned ?key=")
            return
        if meta.public_key == self._local_key:
            self.to_self = True  # a static peer stops redialling (yggdrasil-go 0.5.13)
            self.fail("remote node uses our own key (connected to ourselves?)")
            return
        self.meta = meta
        if not self._owner.link_up(self, meta):
            self.close()
            return
        self.established = True
        if self._reader.rest:
            rest, self._reader.rest = self._reader.rest, b""
            self._owner.link_data(self, rest)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self.error is None:
            self.error = str(exc) or type(exc).__name__
        if self.established:
            self.established = False
            self._owner.link_down(self, self.error)
        self._finish(self.error)

    def _finish(self, error: str | None) -> None:
        """The connection is gone: drop the timer and the transports, resolve :attr:`closed`."""
        self._cancel_timer()
        if self.error is None:
            self.error = error
        self._raw = None
        self.transport = None
        if not self.closed.done():
            self.closed.set_result(self.error)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.established:
            self._owner.link_writable(self)

    # -- helpers ----------------------------------------------------------------

    def fail(self, reason: str, *, quiet: bool = False) -> None:
        """Say why the link is refused/dropped and abort it (no graceful TLS shutdown: a
        peer that stalls must not hold us for the shutdown timeout too)."""
        if self.error is None:
            self.error = reason
            where = f"{self.uri.scheme}://{self.remote}"
            log.log(
                logging.DEBUG if quiet else logging.WARNING,
                "link %s %s: %s",
                "from" if self.inbound else "to",
                where,
                reason,
            )
        self.abort()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        elif self.transport is None:
            self.abort()

    def abort(self) -> None:
        """Drop the connection now, on every path: handshake task, TLS layer, raw socket."""
        task, self._tls_task = self._tls_task, None
        if task is not None:
            task.cancel()  # its handler aborts the raw transport and resolves `closed`
        if self.transport is not None:
            self.transport.abort()
        if self._raw is not None:
            self._raw.abort()

    async def wait_closed(self) -> None:
        """Until the handshake task (if any) has ended and :attr:`closed` resolved."""
        task = self._tls_task
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        if self._raw is not None or self.transport is not None:
            await asyncio.shield(self.closed)

    def write(self, data: bytes) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def write_budget(self, high_water: int) -> int:
        if self.transport is None or self.paused:
            return 0
        return max(high_water - self.transport.get_write_buffer_size(), 0)

    def _on_handshake_timeout(self) -> None:
        self._timer = None
        if not self.established:
            # a flood of these is expected on a public listener: no warning per connection
            self.fail("no valid handshake within the handshake timeout", quiet=self.inbound)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
