"""Mail addresses of the form ``<64 hex of an Ed25519 key>@mesh``."""

from __future__ import annotations

import ipaddress
import string
from dataclasses import dataclass

from core.address import KEY_SIZE, address_for_key
from core.errors import UsageError

__all__ = ["MAIL_DOMAIN", "MailAddress", "parse_mail_address"]

MAIL_DOMAIN = "mesh"
_HEX = frozenset(string.hexdigits)


@dataclass(frozen=True, slots=True)
class MailAddress:
    """A key-addressed mailbox; printed lowercase as ``hex@mesh``."""

    key: bytes

    def __post_init__(self) -> None:
        if len(self.key) != KEY_SIZE:
            raise ValueError(f"mail address key must be {KEY_SIZE} bytes")

    @property
    def local_part(self) -> str:
        return self.key.hex()

    @property
    def node_address(self) -> ipaddress.IPv6Address:
        return address_for_key(self.key)

    def __str__(self) -> str:
        return f"{self.key.hex()}@{MAIL_DOMAIN}"


def parse_mail_address(text: str) -> MailAddress:
    """Parse ``hex@mesh`` case-insensitively; ``<...>`` brackets are allowed.

    Raises :class:`UsageError` saying exactly what is wrong.
    """
    value = text.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    if value.count("@") != 1:
        raise UsageError(f"{text!r} is not a mail address: expected <64 hex>@{MAIL_DOMAIN}")
    local, domain = value.split("@")
    if domain.lower() != MAIL_DOMAIN:
        raise UsageError(
            f"{text!r}: domain {domain!r} is not on the mesh; addresses end in @{MAIL_DOMAIN}"
        )
    if len(local) != KEY_SIZE * 2:
        raise UsageError(
            f"{text!r}: the local part must be {KEY_SIZE * 2} hex characters "
            f"(an Ed25519 public key), got {len(local)}"
        )
    bad = sorted({c for c in local if c not in _HEX})
    if bad:
        raise UsageError(f"{text!r}: the local part has non-hex characters: {''.join(bad)!r}")
    return MailAddress(bytes.fromhex(local))
