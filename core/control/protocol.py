"""Sans-IO framing of the control API.

One JSON object per line, UTF-8, at most :data:`MAX_LINE` bytes::

    → {"id": 1, "method": "status", "params": {}}
    ← {"id": 1, "result": {...}}
    ← {"id": 2, "error": {"code": "bad_request", "message": "..."}}
    ← {"event": "peer.up", "data": {...}}           (after a "subscribe" request)

:class:`LineDecoder` turns received bytes into messages; a line that is too long or
not a JSON object is a :class:`ProtocolError` (the remote side's fault).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MAX_LINE",
    "LineDecoder",
    "ProtocolError",
    "Request",
    "encode",
    "parse_request",
]

MAX_LINE = 1 << 20


class ProtocolError(ValueError):
    """The peer sent something that is not a control-API message."""


@dataclass(frozen=True)
class Request:
    id: int | str | None
    method: str
    params: dict[str, Any] = field(default_factory=dict)


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"


class LineDecoder:
    """Feed bytes, pull decoded JSON objects. Bounded: an endless line is an error."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._buf = bytearray()
        self._max = max_line

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buf += data
        out: list[dict[str, Any]] = []
        while (nl := self._buf.find(b"\n")) >= 0:
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            if line.strip():
                out.append(self._decode(line))
        if len(self._buf) > self._max:
            self._buf.clear()
            raise ProtocolError(f"control message longer than {self._max} bytes")
        return out

    @staticmethod
    def _decode(line: bytes) -> dict[str, Any]:
        try:
            value = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProtocolError(f"not JSON: {exc}") from None
        except RecursionError:
            raise ProtocolError("JSON nested too deeply") from None
        if not isinstance(value, dict):
            raise ProtocolError("a control message must be a JSON object")
        return value


def parse_request(message: dict[str, Any]) -> Request:
    method = message.get("method")
    if not isinstance(method, str) or not method:
        raise ProtocolError("request needs a string 'method'")
    params = message.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ProtocolError("'params' must be an object")
    rid = message.get("id")
    if rid is not None and not isinstance(rid, (int, str)):
        raise ProtocolError("'id' must be a number or a string")
    return Request(rid, method, params)
