"""meshsuite core: the node and the app kit. Apps import only the names in ``__all__``."""

from core.db import AppDatabase
from core.errors import MeshError, UsageError
from core.groupcommit import GroupCommit

__all__ = [
    # database (KIT-DB)
    "AppDatabase",
    "GroupCommit",
    # errors
    "MeshError",
    "UsageError",
]
