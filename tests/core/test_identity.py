"""The node key file: created once, 0600, refused (never replaced) when wrong."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from core.errors import IdentityError
from core.identity import (
    Identity,
    load_identity,
    load_or_create_identity,
    parse_yggdrasil_key,
    write_key_file,
)
from tests.conftest import require


def test_first_run_creates_key_with_mode_0600(tmp_path: Path) -> None:
    ident, created = load_or_create_identity(tmp_path / "data")
    assert created
    path = tmp_path / "data" / "node.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_identity(path).public_key == ident.public_key


def test_second_run_loads_the_same_key(tmp_path: Path) -> None:
    first, _ = load_or_create_identity(tmp_path)
    second, created = load_or_create_identity(tmp_path)
    assert not created
    assert second.public_key == first.public_key


def test_group_readable_key_is_refused_and_left_alone(tmp_path: Path) -> None:
    load_or_create_identity(tmp_path)
    path = tmp_path / "node.key"
    path.chmod(0o640)
    before = path.read_bytes()
    with pytest.raises(IdentityError, match="chmod 600"):
        load_or_create_identity(tmp_path)
    assert path.read_bytes() == before


def test_garbage_key_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    path.write_bytes(b"not a key\n")
    path.chmod(0o600)
    with pytest.raises(IdentityError, match="not a PEM private key"):
        load_or_create_identity(tmp_path)
    assert path.read_bytes() == b"not a key\n"


def test_write_refuses_to_replace_existing_key(tmp_path: Path) -> None:
    write_key_file(tmp_path / "node.key", Identity.generate())
    with pytest.raises(IdentityError, match="refusing"):
        write_key_file(tmp_path / "node.key", Identity.generate())


def test_yggdrasil_hex_private_key_round_trips() -> None:
    ident = Identity.generate()
    conf = "{\n  # comment\n  PrivateKey: " + ident.to_yggdrasil_hex() + "\n  Peers: []\n}\n"
    assert parse_yggdrasil_key(conf.encode(), "conf").public_key == ident.public_key


def test_yggdrasil_json_config_round_trips() -> None:
    ident = Identity.generate()
    conf = ident.to_yggdrasil_config().encode()
    assert parse_yggdrasil_key(conf, "conf").public_key == ident.public_key


def test_private_key_path_pem_is_followed(tmp_path: Path) -> None:
    ident = Identity.generate()
    (tmp_path / "k.pem").write_bytes(ident.to_pem())
    conf = b'{"PrivateKeyPath": "k.pem"}'
    assert parse_yggdrasil_key(conf, "conf", tmp_path).public_key == ident.public_key


def test_corrupt_hex_private_key_is_refused() -> None:
    ident = Identity.generate()
    bad = ident.to_yggdrasil_hex()[:-2] + ("00" if ident.to_yggdrasil_hex()[-2:] != "00" else "11")
    with pytest.raises(IdentityError, match="does not match"):
        parse_yggdrasil_key(f"PrivateKey: {bad}".encode(), "conf")
    with pytest.raises(IdentityError, match="128 hex"):
        parse_yggdrasil_key(b"PrivateKey: abcd", "conf")


def test_key_generated_by_yggdrasil_0_5_imports_with_same_address(tmp_path: Path) -> None:
    binary = shutil.which("yggdrasil")
    require(binary is not None, "the yggdrasil binary is not installed (scripts/install-system)")
    assert binary is not None
    conf = subprocess.run(
        [binary, "-genconf", "-json"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    address = subprocess.run(
        [binary, "-useconf", "-address"], input=conf, capture_output=True, text=True, timeout=30
    ).stdout.strip()
    ident = parse_yggdrasil_key(conf.encode(), "genconf")
    assert str(ident.address) == address
    # And the PEM the suite writes is what 0.5 accepts as PrivateKeyPath.
    pem = tmp_path / "node.key"
    write_key_file(pem, ident)
    pem_conf = json.dumps({"PrivateKeyPath": str(pem)})
    out = subprocess.run(
        [binary, "-useconf", "-address"], input=pem_conf, capture_output=True, text=True, timeout=30
    )
    assert out.stdout.strip() == address, out.stderr
    assert os.stat(pem).st_mode & 0o077 == 0
