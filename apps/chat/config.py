"""The ``[chat]`` table of ``mesh.toml`` (and ``mesh up`` flags)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from core import UsageError

__all__ = ["CHAT_PORT", "ChatConfig"]

CHAT_PORT = 5310


@dataclass(frozen=True)
class ChatConfig:
    port: int = CHAT_PORT
    expiry_days: float = 30.0  # an undelivered message fails after this
    skew: float = 300.0  # s of clock difference tolerated (sent time in the future)
    retry_initial: float = 10.0  # s before the first retry (peer.up/session.up retry at once)
    retry_max: float = 900.0
    max_queued: int = 100_000  # outbox entries
    rate_burst: int = 1000  # envelopes a peer may send at once ...
    rate_per_minute: int = 6000  # ... and sustained (100/s: an offline queue drains fast)
    # Strangers (not a trusted contact, conversation not accepted): a small request.
    stranger_rate_burst: int = 10  # envelopes a stranger may send at once ...
    stranger_rate_per_minute: int = 20  # ... and sustained
    stranger_messages: int = 5  # messages one stranger may leave until accepted ...
    stranger_bytes: int = 32 * 1024  # ... and bytes of text
    strangers_total_bytes: int = 8 * 1024 * 1024  # all strangers' waiting text together
    conns_per_peer: int = 4
    conns_total: int = 128
    idle_timeout: float = 300.0  # s an incoming stream may stay silent
    first_frame_timeout: float = 10.0  # s a new incoming stream has for its first frame
    connect_timeout: float = 15.0
    ack_timeout: float = 30.0

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> ChatConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise UsageError(f"[chat] has unknown settings: {', '.join(sorted(unknown))}")
        try:
            config = cls(**{k: type(getattr(cls, k))(v) for k, v in raw.items() if v is not None})
        except (TypeError, ValueError) as exc:
            raise UsageError(f"[chat] has a bad value: {exc}") from None
        if not 0 <= config.port < 65536:
            raise UsageError("[chat] port must be 0-65535")
        for name in (
            "expiry_days",
            "skew",
            "retry_initial",
            "retry_max",
            "idle_timeout",
            "first_frame_timeout",
        ):
            if not getattr(config, name) > 0:
                raise UsageError(f"[chat] {name} must be > 0")
        return config

    @property
    def expiry(self) -> float:
        return self.expiry_days * 86400.0
