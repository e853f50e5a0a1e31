"""Printing data for people (aligned fields) or for scripts (``--json``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any


def emit(data: Mapping[str, Any] | list[Any], *, as_json: bool) -> None:
    if as_json:
        json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
        return
    if isinstance(data, Mapping):
        emit_fields(data)
    else:
        for item in data:
            print(item)


def emit_fields(data: Mapping[str, Any], indent: str = "") -> None:
    width = max((len(k) for k in data), default=0)
    for key, value in data.items():
        if isinstance(value, Mapping):
            print(f"{indent}{key}:")
            emit_fields(value, indent + "  ")
        elif isinstance(value, list):
            print(f"{indent}{key}:" + ("" if value else " (none)"))
            for item in value:
                if isinstance(item, Mapping):
                    print(f"{indent}  - " + ", ".join(f"{k}={v}" for k, v in item.items()))
                else:
                    print(f"{indent}  - {item}")
        else:
            print(f"{indent}{key.ljust(width)}  {value}")
