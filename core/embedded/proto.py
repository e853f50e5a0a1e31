"""yggdrasil's in-session proto messages (``src/core/proto.go``, ``nodeinfo.go``, v0.5.12).

A session payload whose first byte is ``2`` (``typeSessionProto``) carries::

    0x01                     nodeinfo request
    0x02 <json>              nodeinfo response (our NodeInfo object)
    0xFF 0x01                debug getSelf request
    0xFF 0x02 <json>         getSelf response {"key": hex, "routing_entries": "N"}
    0xFF 0x03                debug getPeers request
    0xFF 0x04 <keys>         getPeers response: 32-byte peer keys, cut to fit the MTU
    0xFF 0x05                debug getTree request
    0xFF 0x06 <keys>         getTree response: 32-byte tree entry keys, cut to fit

:class:`ProtoHandler` answers requests the way a daemon does (so ``yggdrasilctl
getNodeInfo`` / ``debug_remoteGetSelf`` / ``debug_remoteGetPeers`` /
``debug_remoteGetTree`` on a daemon host work against us) and matches responses to our
own requests through callbacks. It owns no timers: the caller bounds how long it waits.
"""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_NODEINFO",
    "DebugType",
    "ProtoHandler",
    "ProtoType",
    "SelfView",
    "default_nodeinfo",
    "encode_nodeinfo",
    "split_keys",
]

log = logging.getLogger(__name__)

TYPE_SESSION_PROTO = 2
MAX_NODEINFO = 16384  # "NodeInfo exceeds max length of 16384 bytes"
MAX_PENDING = 256


class ProtoType:
    DUMMY = 0
    NODEINFO_REQUEST = 1
    NODEINFO_RESPONSE = 2
    DEBUG = 255


class DebugType:
    DUMMY = 0
    GET_SELF_REQUEST = 1
    GET_SELF_RESPONSE = 2
    GET_PEERS_REQUEST = 3
    GET_PEERS_RESPONSE = 4
    GET_TREE_REQUEST = 5
    GET_TREE_RESPONSE = 6


@dataclass(frozen=True)
class SelfView:
    """What the debug answers need from the routing layer."""

    key: bytes
    routing_entries: int
    peer_keys: tuple[bytes, ...]
    tree_keys: tuple[bytes, ...]


def default_nodeinfo(version: str) -> dict[str, Any]:
    """What ``_setNodeInfo`` adds when NodeInfoPrivacy is off, naming this program."""
    return {
        "buildname": "meshsuite",
        "buildversion": version,
        "buildplatform": platform.system().lower(),
        "buildarch": platform.machine().lower(),
    }


def encode_nodeinfo(nodeinfo: dict[str, Any]) -> bytes:
    """Go ``json.Marshal`` of a map: sorted keys, no spaces. Refuses > 16384 bytes."""
    data = json.dumps(nodeinfo, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    raw = data.encode()
    if len(raw) > MAX_NODEINFO:
        raise ValueError(f"NodeInfo is {len(raw)} bytes; the limit is {MAX_NODEINFO}")
    return raw


_REQUEST_FOR = {
    DebugType.GET_SELF_RESPONSE: "self",
    DebugType.GET_PEERS_RESPONSE: "peers",
    DebugType.GET_TREE_RESPONSE: "tree",
}
_REQUEST_TYPE = {
    "self": DebugType.GET_SELF_REQUEST,
    "peers": DebugType.GET_PEERS_REQUEST,
    "tree": DebugType.GET_TREE_REQUEST,
}


class ProtoHandler:
    """``protoHandler`` + ``nodeinfo``: answers and requests, sans timers."""

    def __init__(
        self,
        *,
        send: Callable[[bytes, bytes], None],
        self_view: Callable[[], SelfView],
        mtu: Callable[[], int],
        nodeinfo: bytes,
    ) -> None:
        self._send = send  # (key, session payload including the type byte)
        self._self_view = self_view
        self._mtu = mtu
        self.nodeinfo = nodeinfo
        # (kind, key) -> callback; kind is "nodeinfo", "self", "peers" or "tree"
        self._pending: dict[tuple[str, bytes], Callable[[bytes], None]] = {}

    # -- incoming -----------------------------------------------------------

    def handle(self, key: bytes, data: bytes) -> None:
        """A proto payload (after the ``typeSessionProto`` byte) from ``key``."""
        if not data:
            return
        kind = data[0]
        if kind == ProtoType.NODEINFO_REQUEST:
            self._reply(key, bytes([ProtoType.NODEINFO_RESPONSE]) + self.nodeinfo)
        elif kind == ProtoType.NODEINFO_RESPONSE:
            self._resolve("nodeinfo", key, data[1:])
        elif kind == ProtoType.DEBUG and len(data) > 1:
            self._handle_debug(key, data[1], data[2:])

    def _handle_debug(self, key: bytes, dtype: int, body: bytes) -> None:
        if dtype == DebugType.GET_SELF_REQUEST:
            view = self._self_view()
            answer = {"key": view.key.hex(), "routing_entries": str(view.routing_entries)}
            self._send_debug(key, DebugType.GET_SELF_RESPONSE, encode_nodeinfo(answer))
        elif dtype == DebugType.GET_PEERS_REQUEST:
            self._send_debug(
                key, DebugType.GET_PEERS_RESPONSE, self._keys(self._self_view().peer_keys)
            )
        elif dtype == DebugType.GET_TREE_REQUEST:
            self._send_debug(
                key, DebugType.GET_TREE_RESPONSE, self._keys(self._self_view().tree_keys)
            )
        elif dtype in _REQUEST_FOR:
            self._resolve(_REQUEST_FOR[dtype], key, body)

    def _keys(self, keys: tuple[bytes, ...]) -> bytes:
        # "if uint64(len(tmp))+responseOverhead > p.core.MTU() { break }"
        room = max(self._mtu() - 2, 0) // 32
        return b"".join(keys[:room])

    def _resolve(self, kind: str, key: bytes, body: bytes) -> None:
        callback = self._pending.pop((kind, key), None)
        if callback is not None:
            callback(bytes(body))

    def _reply(self, key: bytes, payload: bytes) -> None:
        self._send(key, bytes([TYPE_SESSION_PROTO]) + payload)

    def _send_debug(self, key: bytes, dtype: int, body: bytes) -> None:
        self._reply(key, bytes([ProtoType.DEBUG, dtype]) + body)

    # -- outgoing requests -----------------------------------------------------

    def request(self, kind: str, key: bytes, callback: Callable[[bytes], None]) -> None:
        """Ask ``key`` for "nodeinfo", "self", "peers" or "tree"; ``callback(body)``.

        A newer request of the same kind to the same key replaces the older one, as
        upstream does. Call :meth:`cancel` when giving up.
        """
        if kind != "nodeinfo" and kind not in _REQUEST_TYPE:
            raise ValueError(f"unknown proto request {kind!r}; use nodeinfo, self, peers, tree")
        if len(self._pending) >= MAX_PENDING and (kind, key) not in self._pending:
            raise ValueError(f"too many proto requests in flight (limit {MAX_PENDING})")
        self._pending[(kind, key)] = callback
        if kind == "nodeinfo":
            self._reply(key, bytes([ProtoType.NODEINFO_REQUEST]))
        else:
            self._send_debug(key, _REQUEST_TYPE[kind], b"")

    def cancel(self, kind: str, key: bytes, callback: Callable[[bytes], None]) -> None:
        if self._pending.get((kind, key)) is callback:
            del self._pending[(kind, key)]


def split_keys(body: bytes) -> list[bytes]:
    """The keys in a getPeers/getTree response (``for len(bs) >= len(key)``)."""
    return [body[i : i + 32] for i in range(0, len(body) - len(body) % 32, 32)]
