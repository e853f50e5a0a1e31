"""Addressing must agree bit for bit with yggdrasil-go."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from core.address import (
    address_for_key,
    is_mesh_address,
    is_mesh_subnet_address,
    partial_key_for_address,
    partial_key_for_subnet,
    subnet_for_key,
)
from tests.conftest import require

YGG_04 = Path("/opt/meshsuite/yggdrasil-0.4.7/usr/sbin/yggdrasil")

# yggdrasil-go src/address/address_test.go (TestAddress_AddrForKey / SubnetForKey).
_VECTOR_KEY = bytes(
    [
        189, 186, 207, 216, 34, 64, 222, 61, 205, 18, 57, 36, 203, 181, 82, 86,
        251, 141, 171, 8, 170, 152, 227, 5, 82, 138, 184, 79, 65, 158, 110, 251,
    ]
)  # fmt: skip
_VECTOR_ADDR = bytes([2, 0, 132, 138, 96, 79, 187, 126, 67, 132, 101, 219, 141, 182, 104, 149])
_VECTOR_SUBNET = bytes([3, 0, 132, 138, 96, 79, 187, 126])


def _public(seed: bytes) -> bytes:
    return (
        Ed25519PrivateKey.from_private_bytes(seed)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def test_matches_yggdrasil_go_address_vector() -> None:
    assert address_for_key(_VECTOR_KEY).packed == _VECTOR_ADDR


def test_matches_yggdrasil_go_subnet_vector() -> None:
    net = subnet_for_key(_VECTOR_KEY)
    assert net.prefixlen == 64
    assert net.network_address.packed[:8] == _VECTOR_SUBNET


def test_partial_key_of_vector_address_agrees_with_key_prefix() -> None:
    partial = partial_key_for_address(ipaddress.IPv6Address(_VECTOR_ADDR))
    # ones=0 for this key: the address carries key bits 1..111 after the first zero.
    assert partial[:13] == _VECTOR_KEY[:13]


def _leading_zero_bits(key: bytes) -> int:
    value = int.from_bytes(key, "big")
    return 256 - value.bit_length()


def _assert_prefix_equal(a: bytes, b: bytes, bits: int) -> None:
    bits = min(bits, 256)
    mask = ((1 << bits) - 1) << (256 - bits)
    assert int.from_bytes(a, "big") & mask == int.from_bytes(b, "big") & mask


@given(st.binary(min_size=32, max_size=32).filter(any))
def test_partial_key_agrees_with_key_on_every_recoverable_bit(key: bytes) -> None:
    # The leading zero bits are counted in one byte, then the first one bit is implied,
    # then the address keeps 112 more bits and the subnet 48. (The all-zero key wraps
    # the count in yggdrasil-go too, so it is left out.)
    zeros = _leading_zero_bits(key)
    _assert_prefix_equal(partial_key_for_address(address_for_key(key)), key, zeros + 1 + 112)
    _assert_prefix_equal(partial_key_for_subnet(subnet_for_key(key)), key, zeros + 1 + 48)


@given(st.integers(min_value=0, max_value=200), st.binary(min_size=32, max_size=32))
def test_keys_with_leading_zero_bits_stay_in_200_slash_8(zeros: int, noise: bytes) -> None:
    key = (int.from_bytes(noise, "big") >> zeros).to_bytes(32, "big")
    addr = address_for_key(key)
    assert is_mesh_address(addr)
    assert not is_mesh_subnet_address(addr)
    assert addr.packed[1] == _leading_zero_bits(key) & 0xFF
    assert is_mesh_subnet_address(subnet_for_key(key).network_address)


def test_is_mesh_address_ignores_python_reserved_flag() -> None:
    addr = ipaddress.IPv6Address("200:1234::1")
    assert addr.is_reserved  # Python's view; irrelevant to the mesh
    assert is_mesh_address(addr)
    assert is_mesh_address("3ff::1")
    assert not is_mesh_address("fd00::1")
    assert not is_mesh_address("::1")
    assert not is_mesh_address("127.0.0.1")
    assert not is_mesh_address("not an address")


def test_wrong_key_length_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        address_for_key(b"\x00" * 31)


def test_partial_key_refuses_non_mesh_address() -> None:
    with pytest.raises(ValueError, match="200::/8"):
        partial_key_for_address("fe80::1")


def _ygg(binary: str | Path, conf: str, flag: str) -> str:
    out = subprocess.run(
        [str(binary), "-useconf", flag], input=conf, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def _keys_with_leading_zeros(count: int, max_zero_bits: int) -> list[tuple[bytes, bytes]]:
    """Real key pairs whose public key starts with up to ``max_zero_bits`` zero bits."""
    found: list[tuple[bytes, bytes]] = []
    want = 1
    while len(found) < count:
        seed = os.urandom(32)
        pub = _public(seed)
        if int.from_bytes(pub, "big") >> (256 - want) == 0:
            found.append((seed, pub))
            want = want % max_zero_bits + 1
    return found


def test_agrees_with_yggdrasil_0_5_binary_on_random_keys() -> None:
    binary = shutil.which("yggdrasil")
    require(binary is not None, "the yggdrasil binary is not installed (scripts/install-system)")
    assert binary is not None
    pairs = [(s, _public(s)) for s in (os.urandom(32) for _ in range(12))]
    pairs += _keys_with_leading_zeros(12, 12)
    for seed, pub in pairs:
        conf = json.dumps({"PrivateKey": (seed + pub).hex()})
        assert _ygg(binary, conf, "-address") == str(address_for_key(pub)), pub.hex()
        assert _ygg(binary, conf, "-subnet") == str(subnet_for_key(pub)), pub.hex()


def test_agrees_with_yggdrasil_0_4_binary_on_keys_with_many_leading_zero_bits() -> None:
    # 0.4.7 derives the address from the public half of PrivateKey without checking
    # it against the seed, so any key bit pattern can be put to the real code.
    require(YGG_04.exists(), f"{YGG_04} is missing (scripts/install-system)")
    keys = [bytes(32), b"\xff" * 32, bytes(31) + b"\x01"]
    for zeros in (0, 1, 7, 8, 9, 15, 16, 63, 64, 100, 127, 128, 129, 200, 254):
        noise = int.from_bytes(os.urandom(32), "big") | (1 << 255)
        keys.append((noise >> zeros).to_bytes(32, "big"))
    for key in keys:
        conf = json.dumps({"PrivateKey": (os.urandom(32) + key).hex()})
        assert _ygg(YGG_04, conf, "-address") == str(address_for_key(key)), key.hex()
        assert _ygg(YGG_04, conf, "-subnet") == str(subnet_for_key(key)), key.hex()
