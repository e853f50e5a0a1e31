"""QUIC over key-addressed datagrams (yggquic-compatible): the transport Yggmail uses.

See :mod:`core.keyquic.endpoint`. Nothing here imports aioquic until an endpoint is made.
"""

from __future__ import annotations

from core.keyquic.endpoint import KeyQuicConfig, KeyQuicEndpoint, KeyQuicStats, StreamFactory

__all__ = ["KeyQuicConfig", "KeyQuicEndpoint", "KeyQuicStats", "StreamFactory"]
