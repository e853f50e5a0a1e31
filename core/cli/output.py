"""Printing data for people (aligned fields) or for scripts (``--json``)."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from typing import Any

from core.text import safe_line


def emit(data: Mapping[str, Any] | list[Any], *, as_json: bool) -> None:
    if as_json:
        json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
        return
    if isinstance(data, Mapping):
        emit_fields(data)
    else:
        for item in data:
            print(safe_line(item))


def human(value: Any) -> str:
    """A value for people: floats rounded (two decimals, trailing zeros dropped; below 1,
    three significant digits so that small latencies stay visible), the rest as str."""
    if isinstance(value, float) and math.isfinite(value):
        if value != 0 and abs(value) < 1:
            return f"{value:.3g}"
        text = f"{value:.2f}".rstrip("0").rstrip(".")
        return "0" if text == "-0" else text
    return safe_line(value)  # values can be a peer's words (names, reasons)


def emit_fields(data: Mapping[str, Any], indent: str = "") -> None:
    width = max((len(k) for k in data), default=0)
    for key, value in data.items():
        if isinstance(value, Mapping):
            print(f"{indent}{safe_line(key)}:")
            emit_fields(value, indent + "  ")
        elif isinstance(value, list):
            print(f"{indent}{key}:" + ("" if value else " (none)"))
            for item in value:
                if isinstance(item, Mapping):
                    pairs = (f"{safe_line(k)}={human(v)}" for k, v in item.items())
                    print(f"{indent}  - " + ", ".join(pairs))
                else:
                    print(f"{indent}  - {human(item)}")
        else:
            print(f"{indent}{key.ljust(width)}  {human(value)}")
