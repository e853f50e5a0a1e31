"""The config a managed daemon runs with, built from the suite's own identity.

Start from what the installed daemon prints for ``-genconf -json`` (so every key is one
that version knows: 0.4.7 has ``PublicKey`` and multicast ``Port``/``Priority``, 0.5
has ``PrivateKeyPath`` and multicast ``Password``) and set only what the suite decides.
Pure functions; the caller runs the binary and writes the file.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import MeshError
from core.identity import Identity

__all__ = ["DaemonSettings", "build_daemon_config", "parse_genconf"]


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    listen: tuple[str, ...]
    peers: tuple[str, ...]
    multicast_interfaces: tuple[str, ...]  # regexes; empty: no multicast discovery
    admin_listen: str
    if_name: str
    key_path: Path | None = None  # PEM of the identity, used by 0.5 (PrivateKeyPath)


def parse_genconf(output: bytes, binary: str) -> dict[str, Any]:
    try:
        template = json.loads(output)
    except ValueError:
        raise MeshError(
            f"{binary} -genconf -json did not print JSON; is {binary} really yggdrasil "
            "(0.4.x or 0.5.x)?"
        ) from None
    if not isinstance(template, dict) or "PrivateKey" not in template:
        raise MeshError(f"{binary} -genconf -json printed no PrivateKey; unsupported version")
    return template


def _multicast(template: dict[str, Any], regexes: tuple[str, ...]) -> list[dict[str, Any]]:
    shapes = template.get("MulticastInterfaces")
    shape: dict[str, Any] = {"Beacon": True, "Listen": True}
    if isinstance(shapes, list) and shapes and isinstance(shapes[0], dict):
        shape = dict(shapes[0])
    return [{**shape, "Regex": regex} for regex in regexes]


def build_daemon_config(
    template: dict[str, Any], identity: Identity, settings: DaemonSettings
) -> dict[str, Any]:
    """``template`` with the suite's key, links, admin socket and TUN name."""
    config = copy.deepcopy(template)
    is_04 = "PublicKey" in config  # 0.4.x keeps the public half beside the private key
    if is_04:
        config["PrivateKey"] = identity.to_yggdrasil_hex()
        config["PublicKey"] = identity.public_key.hex()
    elif settings.key_path is not None:
        config.pop("PrivateKey", None)
        config["PrivateKeyPath"] = str(settings.key_path)
    else:
        config["PrivateKey"] = identity.to_yggdrasil_hex()
    config["Listen"] = list(settings.listen)
    config["Peers"] = list(settings.peers)
    config["InterfacePeers"] = {}
    config["MulticastInterfaces"] = _multicast(template, settings.multicast_interfaces)
    config["AdminListen"] = settings.admin_listen
    config["IfName"] = settings.if_name
    return config
