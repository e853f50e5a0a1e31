"""Yggdrasil addressing, bit-exact with yggdrasil-go ``src/address/address.go``.

A node's IPv6 address is derived from its Ed25519 public key:

1. invert every bit of the key;
2. count the leading one bits (``ones``) and drop them together with the first zero;
3. the address is ``0x02``, then ``ones`` as one byte, then the remaining bits,
   truncated to 128 bits in all.

The /64 subnet (``300::/8`` range) is the same with the prefix byte's low bit set.
Only part of the key survives in an address; :func:`partial_key_for_address` recovers
it the way yggdrasil-go's ``GetKey`` does (unknown bits come back as ones, i.e. as
zeroes before the final inversion).

Python's :mod:`ipaddress` marks ``200::/7`` as *reserved*; never judge mesh addresses
with ``is_reserved``: use :func:`is_mesh_address`.
"""

from __future__ import annotations

import ipaddress

__all__ = [
    "KEY_SIZE",
    "MESH_NETWORK",
    "PREFIX",
    "address_for_key",
    "is_mesh_address",
    "is_mesh_subnet_address",
    "partial_key_for_address",
    "partial_key_for_subnet",
    "subnet_for_key",
]

KEY_SIZE = 32
PREFIX = 0x02
MESH_NETWORK = ipaddress.IPv6Network("200::/7")
_ADDRESS_NETWORK = ipaddress.IPv6Network("200::/8")
_SUBNET_NETWORK = ipaddress.IPv6Network("300::/8")

AddressLike = ipaddress.IPv6Address | str | bytes


def _check_key(public_key: bytes) -> None:
    if not isinstance(public_key, (bytes, bytearray)):
        raise TypeError("public key must be bytes")
    if len(public_key) != KEY_SIZE:
        raise ValueError(f"public key must be {KEY_SIZE} bytes, got {len(public_key)}")


def _address_bytes(public_key: bytes) -> bytes:
    _check_key(public_key)
    inverted = int.from_bytes(bytes(b ^ 0xFF for b in public_key), "big")
    total = KEY_SIZE * 8
    ones = 0
    while ones < total and inverted >> (total - 1 - ones) & 1:
        ones += 1
    # Bits after the leading ones and the first zero (none left if the key ran out).
    rest_bits = max(total - ones - 1, 0)
    rest = inverted & ((1 << rest_bits) - 1)
    # Whole bytes only, as the reference packs 8 bits at a time and drops the tail.
    whole = rest_bits // 8
    rest >>= rest_bits - whole * 8
    tail = rest.to_bytes(whole, "big") if whole else b""
    # ``ones`` is a byte in the reference (it wraps for the all-zero key).
    return (bytes([PREFIX, ones & 0xFF]) + tail + bytes(14))[:16]


def address_for_key(public_key: bytes) -> ipaddress.IPv6Address:
    """The node address (``200::/8``) for an Ed25519 public key (``AddrForKey``)."""
    return ipaddress.IPv6Address(_address_bytes(public_key))


def subnet_for_key(public_key: bytes) -> ipaddress.IPv6Network:
    """The routed /64 (``300::/8``) for an Ed25519 public key (``SubnetForKey``)."""
    raw = bytearray(_address_bytes(public_key)[:8])
    raw[0] |= 0x01
    return ipaddress.IPv6Network((bytes(raw) + bytes(8), 64))


def _as_address(value: AddressLike) -> ipaddress.IPv6Address:
    if isinstance(value, ipaddress.IPv6Address):
        return value
    if isinstance(value, (bytes, bytearray)):
        return ipaddress.IPv6Address(bytes(value))
    return ipaddress.IPv6Address(value.split("%", 1)[0])


def _key_from_raw(raw: bytes) -> bytes:
    """yggdrasil-go ``Address.GetKey`` on 16 raw bytes."""
    ones = raw[1]
    key = 0
    total = KEY_SIZE * 8
    for idx in range(min(ones, total)):
        key |= 1 << (total - 1 - idx)
    key_offset = ones + 1
    addr_bits = int.from_bytes(raw, "big")
    for idx in range(16, 128):
        key_idx = key_offset + (idx - 16)
        if key_idx >= total:
            break
        if addr_bits >> (127 - idx) & 1:
            key |= 1 << (total - 1 - key_idx)
    return bytes(b ^ 0xFF for b in key.to_bytes(KEY_SIZE, "big"))


def partial_key_for_address(address: AddressLike) -> bytes:
    """The key bits recoverable from a node address (``Address.GetKey``)."""
    addr = _as_address(address)
    if addr not in _ADDRESS_NETWORK:
        raise ValueError(f"{addr} is not a Yggdrasil node address (200::/8)")
    return _key_from_raw(addr.packed)


def partial_key_for_subnet(subnet: ipaddress.IPv6Network | str) -> bytes:
    """The key bits recoverable from a /64 subnet (``Subnet.GetKey``)."""
    net = ipaddress.IPv6Network(subnet, strict=False) if isinstance(subnet, str) else subnet
    if net.network_address not in _SUBNET_NETWORK:
        raise ValueError(f"{net} is not a Yggdrasil subnet (300::/8)")
    raw = bytearray(net.network_address.packed[:8] + bytes(8))
    raw[0] = PREFIX
    return _key_from_raw(bytes(raw))


def is_mesh_address(address: AddressLike) -> bool:
    """True for any address in ``200::/7`` (node addresses and routed subnets)."""
    try:
        addr = _as_address(address)
    except (ValueError, TypeError):
        return False
    return addr in MESH_NETWORK


def is_mesh_subnet_address(address: AddressLike) -> bool:
    """True for an address inside a node's routed subnet (``300::/8``)."""
    try:
        return _as_address(address) in _SUBNET_NETWORK
    except (ValueError, TypeError):
        return False
