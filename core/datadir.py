"""Where a node keeps its state: one data directory per identity."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

__all__ = ["ENV_DATA_DIR", "default_data_dir", "resolve_data_dir"]

ENV_DATA_DIR = "MESH_DATA_DIR"


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("meshsuite", appauthor=False))


def resolve_data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``--data-dir`` wins, then ``$MESH_DATA_DIR``, then the XDG data directory."""
    if explicit:
        return Path(explicit).expanduser().absolute()
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser().absolute()
    return default_data_dir()
