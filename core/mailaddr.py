"""Mail addresses of the form ``<64 hex of an Ed25519 key>@mesh`` (or ``@yggmail``).

One key gives two addresses: ``hex@mesh`` between meshsuite nodes (SMTP over mesh
IPv6) and ``hex@yggmail`` in the Yggmail network (SMTP over QUIC in session traffic).
:func:`parse_mail_address` takes ``@mesh`` only unless told which domains to accept.
"""

from __future__ import annotations

import ipaddress
import string
from dataclasses import dataclass

from core.address import KEY_SIZE, address_for_key
from core.errors import UsageError

__all__ = ["MAIL_DOMAIN", "MAIL_DOMAINS", "YGGMAIL_DOMAIN", "MailAddress", "parse_mail_address"]

MAIL_DOMAIN = "mesh"
YGGMAIL_DOMAIN = "yggmail"
MAIL_DOMAINS = (MAIL_DOMAIN, YGGMAIL_DOMAIN)
_HEX = frozenset(string.hexdigits)


@dataclass(frozen=True, slots=True)
class MailAddress:
    """A key-addressed mailbox; printed lowercase as ``hex@mesh`` (or ``hex@yggmail``)."""

    key: bytes
    domain: str = MAIL_DOMAIN

    def __post_init__(self) -> None:
        if len(self.key) != KEY_SIZE:
            raise ValueError(f"mail address key must be {KEY_SIZE} bytes")
        if self.domain not in MAIL_DOMAINS:
            raise ValueError(f"mail domain must be one of {', '.join(MAIL_DOMAINS)}")

    @property
    def yggmail(self) -> bool:
        """Whether this is an address in the Yggmail network."""
        return self.domain == YGGMAIL_DOMAIN

    def on(self, domain: str) -> MailAddress:
        """The same key's address in ``domain``."""
        return MailAddress(self.key, domain)

    @property
    def local_part(self) -> str:
        return self.key.hex()

    @property
    def node_address(self) -> ipaddress.IPv6Address:
        return address_for_key(self.key)

    def __str__(self) -> str:
        return f"{self.key.hex()}@{self.domain}"


def parse_mail_address(text: str, domains: tuple[str, ...] = (MAIL_DOMAIN,)) -> MailAddress:
    """Parse ``hex@mesh`` (or another of ``domains``) case-insensitively; ``<...>`` allowed.

    Raises :class:`UsageError` saying exactly what is wrong.
    """
    value = text.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    if value.count("@") != 1:
        raise UsageError(f"{text!r} is not a mail address: expected <64 hex>@{domains[0]}")
    local, domain = value.split("@")
    if domain.lower() not in domains:
        ends = " or ".join(f"@{d}" for d in domains)
        raise UsageError(f"{text!r}: domain {domain!r} is not on the mesh; addresses end in {ends}")
    if len(local) != KEY_SIZE * 2:
        raise UsageError(
            f"{text!r}: the local part must be {KEY_SIZE * 2} hex characters "
            f"(an Ed25519 public key), got {len(local)}"
        )
    bad = sorted({c for c in local if c not in _HEX})
    if bad:
        raise UsageError(f"{text!r}: the local part has non-hex characters: {''.join(bad)!r}")
    return MailAddress(bytes.fromhex(local), domain.lower())
