"""The `mesh` CLI for identity: output, --json, exit codes, nothing changed on error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

KEY = "00" * 31 + "01"


def mesh(
    *args: str, data_dir: Path | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "core.cli.main"]
    if data_dir is not None:
        cmd += ["--data-dir", str(data_dir)]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, input=stdin, timeout=60)


def test_init_is_idempotent_and_prints_identity(tmp_path: Path) -> None:
    first = json.loads(mesh("init", "--json", data_dir=tmp_path).stdout)
    second = json.loads(mesh("init", "--json", data_dir=tmp_path).stdout)
    assert first["created"] is True and second["created"] is False
    assert first["key"] == second["key"]
    assert first["mail_address"] == f"{first['key']}@mesh"
    assert first["address"].startswith("2")


def test_key_address_needs_no_data_dir() -> None:
    out = mesh("key", "address", KEY, "--json")
    assert out.returncode == 0
    assert json.loads(out.stdout) == {"key": KEY, "address": "2ff::", "subnet": "3ff::/64"}


def test_bad_public_key_is_a_usage_error() -> None:
    out = mesh("key", "address", "xyz")
    assert out.returncode == 2
    assert "64 hex characters" in out.stderr


def test_unknown_command_is_a_usage_error() -> None:
    assert mesh("frobnicate").returncode == 2


def test_bad_key_file_fails_with_exit_1_and_is_not_touched(tmp_path: Path) -> None:
    key = tmp_path / "node.key"
    key.write_text("garbage")
    key.chmod(0o600)
    for args in (("init",), ("status",)):
        out = mesh(*args, data_dir=tmp_path)
        assert out.returncode == 1
        assert "not a PEM private key" in out.stderr
    assert key.read_text() == "garbage"


def test_status_without_identity_says_how_to_create_one(tmp_path: Path) -> None:
    out = mesh("status", data_dir=tmp_path)
    assert out.returncode == 1
    assert "mesh init" in out.stderr
    assert not (tmp_path / "node.key").exists()


def test_import_export_round_trip_through_yggdrasil_config(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    mesh("init", data_dir=a)
    conf = mesh("key", "export", "--format", "config", data_dir=a).stdout
    out = mesh("key", "import", "-", "--json", data_dir=b, stdin=conf)
    assert out.returncode == 0, out.stderr
    assert (
        json.loads(out.stdout)["key"]
        == json.loads(mesh("init", "--json", data_dir=a).stdout)["key"]
    )
    # importing over an existing key needs --force and otherwise changes nothing
    again = mesh("key", "import", "-", data_dir=b, stdin=mesh("key", "export", data_dir=a).stdout)
    assert again.returncode == 1
