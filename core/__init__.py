"""meshsuite core: the node and the app kit. Apps import only the names in ``__all__``."""

from core.db import AppDatabase
from core.errors import MeshError, UsageError
from core.groupcommit import GroupCommit
from core.limits import (
    ConnectionLimiter,
    PeerRateLimiter,
    TooManyConnections,
    peer_address,
    peer_key,
)
from core.outbox import (
    Delivered,
    DeliveryResult,
    Failed,
    Outbox,
    OutboxEntry,
    OutboxFull,
    Retry,
    RetryPolicy,
    Scheduler,
    watch_reachable,
)

__all__ = [
    "AppDatabase",
    "ConnectionLimiter",
    "Delivered",
    "DeliveryResult",
    "Failed",
    "GroupCommit",
    "MeshError",
    "Outbox",
    "OutboxEntry",
    "OutboxFull",
    "PeerRateLimiter",
    "Retry",
    "RetryPolicy",
    "Scheduler",
    "TooManyConnections",
    "UsageError",
    "peer_address",
    "peer_key",
    "watch_reachable",
]
