"""meshsuite core: the node and the app kit.

Apps import only the names in ``__all__`` (``from core import Node, Contacts``), plus
the ``core.cli`` helpers when they register CLI commands; ``tests/core/
test_public_surface.py`` fails on any other import of core from ``apps/``. Everything
else in ``core`` is private to it and may change.

The names load lazily (PEP 562 ``__getattr__``): ``import core`` costs nothing, and
``from core import MeshError`` loads ``core.errors`` alone, not the node, its
databases or its backends (the ``mesh`` CLI and the chat TUI start faster). Type
checkers read the same names from the ``TYPE_CHECKING`` imports below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.address import KEY_SIZE, address_for_key, is_mesh_address, subnet_for_key
    from core.config import NodeConfig, load_config
    from core.contacts import (
        AmbiguousContact,
        Contact,
        Contacts,
        Trust,
        UnknownContact,
        parse_key,
        validate_alias,
    )
    from core.control.client import ControlClient, EventStream, NodeNotRunning
    from core.datadir import resolve_data_dir
    from core.db import AppDatabase
    from core.desktop import DesktopNotifier
    from core.errors import IdentityError, MeshError, NeedsSetup, UsageError
    from core.events import EventBus, Subscription
    from core.groupcommit import GroupCommit
    from core.identity import KEY_FILE_NAME, Identity, load_identity
    from core.keyquic import KeyQuicConfig
    from core.limits import (
        ConnectionLimiter,
        PeerRateLimiter,
        TooManyConnections,
        peer_address,
        peer_key,
    )
    from core.mailaddr import (
        MAIL_DOMAIN,
        MAIL_DOMAINS,
        YGGMAIL_DOMAIN,
        MailAddress,
        parse_mail_address,
    )
    from core.node import Node, parse_target
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
    from core.relay.service import RelayVerdict
    from core.replies import REPLY_BUDGET, fit_reply
    from core.service import BaseService, ControlHandler, ControlMethods, Service
    from core.tasks import cancel_and_wait, within
    from core.text import json_safe, safe_line, safe_text, unsafe_reason
    from core.types import NO_KEY_DATAGRAMS, EventSink, MeshServer, NodeEvent, PeerInfo

# name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "Node": "core.node",
    "parse_target": "core.node",
    "EventSink": "core.types",
    "NO_KEY_DATAGRAMS": "core.types",
    "MeshServer": "core.types",
    "NodeEvent": "core.types",
    "PeerInfo": "core.types",
    "EventBus": "core.events",
    "Subscription": "core.events",
    "NodeConfig": "core.config",
    "load_config": "core.config",
    "resolve_data_dir": "core.datadir",
    "KEY_FILE_NAME": "core.identity",
    "Identity": "core.identity",
    "load_identity": "core.identity",
    "KEY_SIZE": "core.address",
    "address_for_key": "core.address",
    "is_mesh_address": "core.address",
    "subnet_for_key": "core.address",
    "KeyQuicConfig": "core.keyquic",
    "MAIL_DOMAIN": "core.mailaddr",
    "MAIL_DOMAINS": "core.mailaddr",
    "YGGMAIL_DOMAIN": "core.mailaddr",
    "MailAddress": "core.mailaddr",
    "parse_mail_address": "core.mailaddr",
    "IdentityError": "core.errors",
    "MeshError": "core.errors",
    "NeedsSetup": "core.errors",
    "UsageError": "core.errors",
    "BaseService": "core.service",
    "ControlHandler": "core.service",
    "ControlMethods": "core.service",
    "Service": "core.service",
    "AmbiguousContact": "core.contacts",
    "Contact": "core.contacts",
    "Contacts": "core.contacts",
    "Trust": "core.contacts",
    "UnknownContact": "core.contacts",
    "parse_key": "core.contacts",
    "validate_alias": "core.contacts",
    "ControlClient": "core.control.client",
    "EventStream": "core.control.client",
    "NodeNotRunning": "core.control.client",
    "AppDatabase": "core.db",
    "GroupCommit": "core.groupcommit",
    "Delivered": "core.outbox",
    "DeliveryResult": "core.outbox",
    "Failed": "core.outbox",
    "Outbox": "core.outbox",
    "OutboxEntry": "core.outbox",
    "OutboxFull": "core.outbox",
    "Retry": "core.outbox",
    "RetryPolicy": "core.outbox",
    "Scheduler": "core.outbox",
    "watch_reachable": "core.outbox",
    "cancel_and_wait": "core.tasks",
    "within": "core.tasks",
    "RelayVerdict": "core.relay.service",
    "DesktopNotifier": "core.desktop",
    "ConnectionLimiter": "core.limits",
    "PeerRateLimiter": "core.limits",
    "TooManyConnections": "core.limits",
    "peer_address": "core.limits",
    "peer_key": "core.limits",
    "REPLY_BUDGET": "core.replies",
    "fit_reply": "core.replies",
    "json_safe": "core.text",
    "safe_line": "core.text",
    "safe_text": "core.text",
    "unsafe_reason": "core.text",
}

__all__ = [
    "KEY_FILE_NAME",
    "KEY_SIZE",
    "MAIL_DOMAIN",
    "MAIL_DOMAINS",
    "NO_KEY_DATAGRAMS",
    "REPLY_BUDGET",
    "YGGMAIL_DOMAIN",
    "AmbiguousContact",
    "AppDatabase",
    "BaseService",
    "ConnectionLimiter",
    "Contact",
    "Contacts",
    "ControlClient",
    "ControlHandler",
    "ControlMethods",
    "Delivered",
    "DeliveryResult",
    "DesktopNotifier",
    "EventBus",
    "EventSink",
    "EventStream",
    "Failed",
    "GroupCommit",
    "Identity",
    "IdentityError",
    "KeyQuicConfig",
    "MailAddress",
    "MeshError",
    "MeshServer",
    "NeedsSetup",
    "Node",
    "NodeConfig",
    "NodeEvent",
    "NodeNotRunning",
    "Outbox",
    "OutboxEntry",
    "OutboxFull",
    "PeerInfo",
    "PeerRateLimiter",
    "RelayVerdict",
    "Retry",
    "RetryPolicy",
    "Scheduler",
    "Service",
    "Subscription",
    "TooManyConnections",
    "Trust",
    "UnknownContact",
    "UsageError",
    "address_for_key",
    "cancel_and_wait",
    "fit_reply",
    "is_mesh_address",
    "json_safe",
    "load_config",
    "load_identity",
    "parse_key",
    "parse_mail_address",
    "parse_target",
    "peer_address",
    "peer_key",
    "resolve_data_dir",
    "safe_line",
    "safe_text",
    "subnet_for_key",
    "unsafe_reason",
    "validate_alias",
    "watch_reachable",
    "within",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once loaded, a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
