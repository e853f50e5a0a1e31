"""Backend selection.

``auto`` takes a reachable yggdrasil daemon (attach), else the embedded node. The
reason for the choice is kept and shown by ``mesh status``.
"""

from __future__ import annotations

import importlib.util
import logging

from core.backend import Backend
from core.config import DEFAULT_ADMIN_ENDPOINT, NodeConfig
from core.errors import MeshError
from core.identity import Identity

__all__ = ["select_backend"]

log = logging.getLogger(__name__)


def _embedded_available() -> bool:
    return importlib.util.find_spec("core.backends.embedded") is not None


async def select_backend(config: NodeConfig, identity: Identity | None) -> tuple[Backend, str]:
    """Build (not start) the backend the config asks for, and say why."""
    if config.backend == "yggdrasil" or (config.backend == "auto" and config.managed):
        from core.backends.yggdrasil import YggdrasilBackend

        mode = "managed daemon" if config.managed else "attached to a running daemon"
        return YggdrasilBackend(config, identity), f"yggdrasil requested ({mode})"
    if config.backend == "embedded":
        return _embedded(config, identity), "embedded requested"

    from core.backends.yggdrasil.backend import endpoints_to_try, find_daemon

    endpoint = config.admin_endpoint or DEFAULT_ADMIN_ENDPOINT
    found = await find_daemon(endpoint)
    if found is not None:
        from core.backends.yggdrasil import YggdrasilBackend

        return YggdrasilBackend(config, identity), f"auto: a daemon answers at {found}"
    tried = " or ".join(endpoints_to_try(endpoint))
    if _embedded_available():
        return _embedded(config, identity), f"auto: no daemon at {tried}, embedded node"
    raise MeshError(
        f"no yggdrasil daemon answers at {tried} and the embedded node is not available; "
        "install and start yggdrasil, or run `mesh up --backend yggdrasil --managed` as root"
    )


def _embedded(config: NodeConfig, identity: Identity | None) -> Backend:
    if identity is None:
        raise MeshError("the embedded node needs this node's own key (run `mesh init`)")
    if not _embedded_available():
        raise MeshError("the embedded backend is not built yet in this version")
    from core.backends.embedded import EmbeddedBackend

    backend: Backend = EmbeddedBackend(config, identity)
    return backend
