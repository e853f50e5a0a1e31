"""Node configuration: frozen, built from defaults, the data dir's ``mesh.toml`` and flags.

``mesh.toml`` (all keys optional)::

    [node]
    backend = "auto"            # auto | yggdrasil | embedded
    managed = false             # yggdrasil backend: run our own daemon
    admin = "unix:///var/run/yggdrasil.sock"
    listen = ["tls://0.0.0.0:0"]
    peers = ["tls://[fd00::1]:12345"]
    multicast_interfaces = [".*"]

    [mail]                      # one table per service; the service reads its own
    smtp = "127.0.0.1:1025"
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from core.errors import UsageError

__all__ = ["CONFIG_FILE_NAME", "DEFAULT_ADMIN_ENDPOINT", "NodeConfig", "load_config"]

CONFIG_FILE_NAME = "mesh.toml"
DEFAULT_ADMIN_ENDPOINT = "unix:///var/run/yggdrasil.sock"
DEFAULT_MULTICAST = (".*",)
BackendName = Literal["auto", "yggdrasil", "embedded"]
_BACKENDS = ("auto", "yggdrasil", "embedded")


@dataclass(frozen=True)
class NodeConfig:
    data_dir: Path
    backend: BackendName = "auto"
    managed: bool = False
    admin_endpoint: str | None = None  # None: the daemon's default, or ours when managed
    yggdrasil_binary: str = "yggdrasil"
    listen: tuple[str, ...] = ()
    peers: tuple[str, ...] = ()
    multicast_interfaces: tuple[str, ...] = ()
    if_name: str = "auto"  # TUN name for a managed daemon
    services: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType({}))

    def service(self, name: str) -> Mapping[str, Any]:
        return self.services.get(name, MappingProxyType({}))

    def with_overrides(self, **changes: Any) -> NodeConfig:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @property
    def control_socket(self) -> Path:
        return self.data_dir / "control.sock"


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise UsageError(f"{where} must be a string or a list of strings")


def load_config(data_dir: Path) -> NodeConfig:
    """Read ``data_dir/mesh.toml`` (if present) into a :class:`NodeConfig`."""
    path = data_dir / CONFIG_FILE_NAME
    raw: dict[str, Any] = {}
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(f"{path}: {exc}") from None
    node = raw.pop("node", {})
    if not isinstance(node, dict):
        raise UsageError(f"{path}: [node] must be a table")
    backend = node.get("backend", "auto")
    if backend not in _BACKENDS:
        raise UsageError(f"{path}: node.backend must be one of {', '.join(_BACKENDS)}")
    known = {
        "backend", "managed", "admin", "listen", "peers", "multicast_interfaces",
        "yggdrasil_binary", "if_name",
    }  # fmt: skip
    unknown = set(node) - known
    if unknown:
        raise UsageError(f"{path}: unknown [node] keys: {', '.join(sorted(unknown))}")
    services = {k: MappingProxyType(dict(v)) for k, v in raw.items() if isinstance(v, dict)}
    return NodeConfig(
        data_dir=data_dir,
        backend=backend,
        managed=bool(node.get("managed", False)),
        admin_endpoint=node.get("admin"),
        yggdrasil_binary=str(node.get("yggdrasil_binary", "yggdrasil")),
        listen=_str_list(node.get("listen", []), "node.listen"),
        peers=_str_list(node.get("peers", []), "node.peers"),
        # LAN discovery is on unless the config says otherwise, as in yggdrasil's
        # default config; `multicast_interfaces = []` (or `mesh up --no-multicast`) is off.
        multicast_interfaces=_str_list(
            node.get("multicast_interfaces", list(DEFAULT_MULTICAST)), "node.multicast_interfaces"
        ),
        if_name=str(node.get("if_name", "auto")),
        services=MappingProxyType(services),
    )
