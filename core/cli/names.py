"""Names for keys in human output: our contacts' aliases, from the running node.

Apps that print keys (``mesh call log``, ``mesh mail queue``) ask the node once per
command (control ``contacts.list``) and label each key by its alias where it has one,
else by its first 16 hex digits and an ellipsis. ``--json`` output never changes: it is
for scripts and keeps raw keys. Without a node (or its contacts) every key is its prefix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from core.control.client import ControlClient
from core.errors import MeshError
from core.text import safe_line

__all__ = ["DASH", "Names", "or_dash", "short_key"]

DASH = "-"
_MAIL_DOMAIN = "@mesh"


def short_key(key: str) -> str:
    """``0123456789abcdef…`` for a 64-hex key (or ``key@mesh``); other text as it is."""
    text = _bare(key)
    return text[:16] + "…" if len(text) > 16 else text


def or_dash(value: Any) -> str:
    """``value`` as text, or a dash for None and the empty string (never ``None``)."""
    return DASH if value is None or value == "" else str(value)


def _bare(key: str) -> str:
    text = str(key).strip()
    if text.lower().endswith(_MAIL_DOMAIN):
        text = text[: -len(_MAIL_DOMAIN)]
    return text.lower()


class Names:
    """Key (hex, or ``key@mesh``) → our alias for it."""

    def __init__(self, aliases: Mapping[str, str] | None = None) -> None:
        self._aliases = {_bare(k): v for k, v in (aliases or {}).items() if v}

    @classmethod
    def from_contacts(cls, contacts: Iterable[Mapping[str, Any]]) -> Names:
        """From ``contacts.list`` rows (``key``, ``alias``)."""
        return cls({str(c["key"]): str(c["alias"]) for c in contacts if c.get("alias")})

    @classmethod
    async def fetch(cls, client: ControlClient) -> Names:
        """The running node's contacts; none if it cannot say (names are a nicety)."""
        try:
            contacts = await client.call("contacts.list")
        except MeshError:
            return cls()
        return cls.from_contacts(contacts if isinstance(contacts, list) else [])

    def alias(self, key: str | None) -> str | None:
        return self._aliases.get(_bare(key)) if key else None

    def label(self, key: str | None, fallback: str | None = None) -> str:
        """The alias of ``key``, else ``fallback`` (when given and not empty), else the
        key's prefix; a dash when there is no key at all."""
        found = self.alias(key)
        if found:
            return safe_line(found)
        if fallback:
            return safe_line(fallback)
        return safe_line(short_key(key)) if key else DASH
