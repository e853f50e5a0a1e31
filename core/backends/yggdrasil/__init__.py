"""The yggdrasil daemon backend (attach to a running daemon, or manage one).

Public surface: :class:`YggdrasilBackend` (what :func:`core.backends.select_backend`
builds), :func:`probe_daemon`, and the admin client with its typed results.
"""

from __future__ import annotations

from .admin import (
    AdminClient,
    AdminCommandError,
    AdminProtocolError,
    DaemonUnreachableError,
    SelfInfo,
    SessionInfo,
    TunInfo,
)
from .backend import YggdrasilBackend, probe_daemon

__all__ = [
    "AdminClient",
    "AdminCommandError",
    "AdminProtocolError",
    "DaemonUnreachableError",
    "SelfInfo",
    "SessionInfo",
    "TunInfo",
    "YggdrasilBackend",
    "probe_daemon",
]
