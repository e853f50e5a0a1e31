"""Mail service configuration: the ``[mail]`` table of ``mesh.toml``, checked and frozen.

::

    [mail]
    smtp = "127.0.0.1:1025"        # submission (mail clients send here)
    imap = "127.0.0.1:1143"        # mail clients read here
    max_size = 33554432            # bytes per message (32 MiB)
    retry_initial = 60             # seconds before the first retry
    retry_max = 3600               # the retry delay doubles up to this
    expire_after = 432000          # give up (and bounce) after this many seconds (5 days)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core import RetryPolicy, UsageError

__all__ = [
    "DEFAULT_IMAP",
    "DEFAULT_SUBMISSION",
    "MESH_SMTP_PORT",
    "MailConfig",
    "parse_listen",
]

# Mesh SMTP listens on the node's mesh address. 25 is privileged (a daemon-backed node
# would need root or CAP_NET_BIND_SERVICE just for mail) and 587/465 mean submission
# from clients, not relay between MTAs; 2525 is the customary unprivileged SMTP port.
MESH_SMTP_PORT = 2525
DEFAULT_SUBMISSION = "127.0.0.1:1025"
DEFAULT_IMAP = "127.0.0.1:1143"
MIB = 1024 * 1024


def parse_listen(value: str, what: str) -> tuple[str, int]:
    """``"127.0.0.1:1025"`` → ``("127.0.0.1", 1025)``; loopback only."""
    host, sep, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UsageError(f"mail.{what} = {value!r}: expected HOST:PORT, e.g. 127.0.0.1:1025")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise UsageError(
            f"mail.{what} = {value!r}: local mail services listen on loopback only "
            "(127.0.0.1 or ::1); passwords cross this socket in clear text"
        )
    return host, int(port_text)


# Mail gives up sooner than core's default (30 days): a bounce after 5 days is the custom.
DEFAULT_RETRY = RetryPolicy(initial=60.0, max_delay=3600.0, jitter=0.1, expiry=5 * 24 * 3600.0)


def _number(config: Mapping[str, Any], key: str, default: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise UsageError(f"mail.{key} must be a positive number, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class MailConfig:
    submission: tuple[str, int] = ("127.0.0.1", 1025)
    imap: tuple[str, int] = ("127.0.0.1", 1143)
    mesh_port: int = MESH_SMTP_PORT
    max_size: int = 32 * MIB
    max_recipients: int = 100
    retry: RetryPolicy = DEFAULT_RETRY
    concurrency: int = 8  # deliveries in flight at once
    max_queue: int = 10_000  # queued messages before submission answers 452
    rate_burst: int = 60  # messages a mesh peer may send at once ...
    rate_per_minute: float = 120.0  # ... and sustained
    io_timeout: float = 120.0
    connections_per_peer: int = 8  # open SMTP connections from one address ...
    max_connections: int = 128  # ... and in all, per server (DATA is held in memory)

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> MailConfig:
        known = {
            "smtp", "imap", "mesh_port", "max_size", "max_recipients", "retry_initial",
            "retry_max", "expire_after", "concurrency", "max_queue", "rate_burst",
            "rate_per_minute", "io_timeout", "connections_per_peer", "max_connections",
        }  # fmt: skip
        unknown = set(config) - known
        if unknown:
            raise UsageError(
                f"unknown [mail] keys: {', '.join(sorted(unknown))} "
                f"(known: {', '.join(sorted(known))})"
            )
        initial = _number(config, "retry_initial", DEFAULT_RETRY.initial)
        maximum = _number(config, "retry_max", DEFAULT_RETRY.max_delay)
        if initial > maximum:
            raise UsageError("mail: need retry_initial <= retry_max")
        retry = RetryPolicy(
            initial=initial,
            max_delay=maximum,
            jitter=DEFAULT_RETRY.jitter,
            expiry=_number(config, "expire_after", DEFAULT_RETRY.expiry),
        )
        return cls(
            submission=parse_listen(str(config.get("smtp", DEFAULT_SUBMISSION)), "smtp"),
            imap=parse_listen(str(config.get("imap", DEFAULT_IMAP)), "imap"),
            mesh_port=int(_number(config, "mesh_port", MESH_SMTP_PORT)),
            max_size=int(_number(config, "max_size", 32 * MIB)),
            max_recipients=int(_number(config, "max_recipients", 100)),
            retry=retry,
            concurrency=int(_number(config, "concurrency", 8)),
            max_queue=int(_number(config, "max_queue", 10_000)),
            rate_burst=int(_number(config, "rate_burst", 60)),
            rate_per_minute=_number(config, "rate_per_minute", 120.0),
            io_timeout=_number(config, "io_timeout", 120.0),
            connections_per_peer=int(_number(config, "connections_per_peer", 8)),
            max_connections=int(_number(config, "max_connections", 128)),
        )
