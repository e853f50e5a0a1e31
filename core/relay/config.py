"""``[relay]`` in ``mesh.toml``: hand-off timing, fetching, and what a relay holds.

[relay]
handoff_after = 60          # s after a message's first attempt before a relay takes it
fetch_interval = 300        # s between fetches from our relays (also on start, NOTIFY)
expiry_days = 30            # a held item is dropped this long after it was submitted
max_item_bytes = 25165824   # one sealed item (24 MiB: a 10 MB attachment and room)
recipient_max_items = 10000
recipient_max_bytes = 268435456   # 256 MiB held for one person
submitter_max_items = 2000
submitter_max_bytes = 67108864    # 64 MiB held from one submitting node
total_max_bytes = 1073741824      # 1 GiB held in all
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from core.errors import UsageError
from core.relay.wire import MAX_ITEM

__all__ = ["RelayConfig"]


@dataclass(frozen=True, slots=True)
class RelayConfig:
    handoff_after: float = 60.0
    fetch_interval: float = 300.0
    expiry_days: float = 30.0
    max_item_bytes: int = MAX_ITEM
    recipient_max_items: int = 10_000
    recipient_max_bytes: int = 256 * 1024 * 1024
    submitter_max_items: int = 2_000
    submitter_max_bytes: int = 64 * 1024 * 1024
    total_max_bytes: int = 1024 * 1024 * 1024
    connect_timeout: float = 15.0
    io_timeout: float = 60.0
    port: int = 0  # 0: core.relay.wire.RELAY_PORT

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "port":
                if not 0 <= value < 65536:
                    raise UsageError("relay.port must be 0-65535")
            elif not value > 0:
                raise UsageError(f"relay.{f.name} must be positive, got {value!r}")
        if self.max_item_bytes > MAX_ITEM:
            raise UsageError(f"relay.max_item_bytes is at most {MAX_ITEM}")

    @property
    def expiry(self) -> float:
        return self.expiry_days * 86400.0

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> RelayConfig:
        known = {f.name: f for f in fields(cls)}
        unknown = set(raw) - set(known)
        if unknown:
            raise UsageError(f"unknown [relay] keys: {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for name, value in raw.items():
            want = float if known[name].type in ("float", float) else int
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise UsageError(f"relay.{name} must be a number")
            values[name] = want(value)
        return cls(**values)
