"""Message text that may come from another node, made safe for a terminal.

A body is stored exactly as its sender signed it, but a remote sender must never be able
to drive the reader's terminal: C0 controls (ESC, NUL, BEL, CR, ...), DEL and C1 controls
(CSI U+009B, OSC U+009D, ...) are shown escaped (``\\x1b``) wherever the CLI prints text
from the node. Newline and tab are text and pass through.
"""

from __future__ import annotations

import re

__all__ = ["escape_controls", "first_control", "json_safe"]

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_JSON_UNESCAPED = re.compile("[\x7f-\x9f]")  # json.dumps escapes C0 itself, never these


def first_control(text: str) -> tuple[int, str] | None:
    """(position, character) of the first control character other than newline/tab."""
    found = _CONTROL.search(text)
    return (found.start(), found.group()) if found else None


def escape_controls(text: str) -> str:
    """``text`` with each control character (not newline or tab) written as ``\\xNN``."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def json_safe(dumped: str) -> str:
    """JSON text (``ensure_ascii=False``) with DEL and C1 controls escaped as ``\\u00NN``;
    they can occur only inside strings, so the JSON means the same."""
    return _JSON_UNESCAPED.sub(lambda m: f"\\u{ord(m.group()):04x}", dumped)
