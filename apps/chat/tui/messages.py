"""Textual messages the chat UI posts to itself."""

from __future__ import annotations

from typing import Any

from textual.message import Message

__all__ = ["ConnectionLost", "NodeEvent"]


class NodeEvent(Message):
    """One event from the node's control API stream."""

    def __init__(self, kind: str, data: Any) -> None:
        super().__init__()
        self.kind = kind
        self.data = data


class ConnectionLost(Message):
    """The node closed the control connection (stopped, restarted)."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason
