"""Control replies that do not grow with data: pages bounded by count *and* bytes.

A control line is at most ``MAX_LINE`` (1 MiB, core.control.protocol). Methods that
return rows a peer or a long history can multiply (chat history, search, conversations,
security records, ...) take a ``limit`` and cut their page with :func:`fit_reply`
to :data:`REPLY_BUDGET` bytes of JSON, saying ``more`` so the caller pages on. The
control server still refuses to send any line over ``MAX_LINE`` (a clear error instead
of a reply the client cannot read).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TypeVar

__all__ = ["REPLY_BUDGET", "fit_reply", "json_size"]

REPLY_BUDGET = 256 * 1024  # bytes of JSON for the rows of one reply

T = TypeVar("T")


def json_size(item: Any) -> int:
    """Bytes ``item`` takes on a control line (ASCII JSON, as the server encodes)."""
    return len(json.dumps(item, separators=(",", ":"), default=str))


def fit_reply(items: Sequence[T], budget: int = REPLY_BUDGET) -> tuple[list[T], bool]:
    """The longest prefix of ``items`` whose JSON fits ``budget`` bytes (always at least
    one item, so a caller paging on makes progress), and whether any were cut."""
    used = 0
    for at, item in enumerate(items):
        used += json_size(item) + 1
        if used > budget and at > 0:
            return list(items[:at]), True
    return list(items), False
