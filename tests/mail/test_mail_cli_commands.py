"""``mesh mail address|passwd|send|queue`` against a data dir and a running mail service."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import socket
from pathlib import Path

import pytest

from apps.mail import cli
from apps.mail.passwords import PASSWORD_FILE_NAME, load_password
from core.errors import MeshError, UsageError
from core.identity import KEY_FILE_NAME, load_or_create_identity, write_key_file
from core.mailaddr import MailAddress
from core.node import Node
from tests.mail.helpers import PASSWORD, MailNode, on_shared_mesh, wait_for


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mesh")
    parser.add_argument("--data-dir")
    cli.register(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(data_dir: Path, *argv: str, stdin: str = "") -> int:
    args = _parser().parse_args(["--data-dir", str(data_dir), *argv])
    old = cli.sys.stdin
    cli.sys.stdin = io.StringIO(stdin)
    try:
        code: int = args.func(args)
        return code
    finally:
        cli.sys.stdin = old


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_address_and_passwd(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    identity, _ = load_or_create_identity(tmp_path)
    assert _run(tmp_path, "mail", "address", "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["mail_address"] == str(MailAddress(identity.public_key))
    assert info["username"] == info["mail_address"]
    assert info["yggmail_address"] == f"{identity.public_key.hex()}@yggmail"  # same key
    assert info["smtp_submission"] == "127.0.0.1:1025" and info["imap"] == "127.0.0.1:1143"
    assert info["mesh_smtp_port"] == 2525 and info["password_set"] is False
    assert _run(tmp_path, "mail", "passwd", "--stdin", stdin="a good password\n") == 0
    capsys.readouterr()
    assert (tmp_path / PASSWORD_FILE_NAME).stat().st_mode & 0o777 == 0o600
    assert load_password(tmp_path).check(b"a good password")
    with pytest.raises(UsageError, match="at least"):
        _run(tmp_path, "mail", "passwd", "--stdin", stdin="short\n")
    with pytest.raises(UsageError, match="no password"):
        _run(tmp_path, "mail", "passwd", "--stdin", stdin="")


@on_shared_mesh
async def test_send_and_queue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mesh_nodes: list[Node]
) -> None:
    a_dir = tmp_path / "a"
    a_dir.mkdir()
    # A's data dir holds the key of the (shared, running) node A, as `mesh node` keeps it.
    assert mesh_nodes[0].identity is not None
    write_key_file(a_dir / KEY_FILE_NAME, mesh_nodes[0].identity)
    port = _free_port()
    (a_dir / "mesh.toml").write_text(f'[mail]\nsmtp = "127.0.0.1:{port}"\n')
    a = await MailNode.serve(
        mesh_nodes[0], a_dir, smtp=f"127.0.0.1:{port}", retry_initial=30, retry_max=60
    )
    b = await MailNode.serve(mesh_nodes[1], tmp_path / "b")
    try:
        code = await asyncio.to_thread(
            _run,
            a_dir,
            "mail", "send", "--to", b.address, "--to", a.address.upper(), "--subject", "cli",
            "--password-stdin", "--json",
            stdin=f"{PASSWORD}\nbody from the command line\n",
        )  # fmt: skip
        assert code == 0
        out = json.loads(capsys.readouterr().out)
        assert sorted(out["queued_for"]) == sorted([b.address, a.address])
        await wait_for("the mail at B", lambda: b.store.count("INBOX"))
        raw = await b.store.fetch_raw("INBOX", (await b.store.list_uids("INBOX"))[0])
        assert raw is not None and b"body from the command line" in raw
        assert b"Subject: cli" in raw

        # With B away the mail waits in the queue; `mesh mail queue` shows why.
        await b.service.close()
        await asyncio.to_thread(
            _run, a_dir, "mail", "send", "--to", b.address, "--password-stdin",
            stdin=f"{PASSWORD}\nsecond\n",
        )  # fmt: skip
        capsys.readouterr()

        async def deferred() -> bool:
            pending = await a.queue.pending()
            return bool(pending) and pending[0].attempts >= 1

        await wait_for("a deferred delivery", deferred)
        assert _run(a_dir, "mail", "queue", "--json") == 0
        rows = json.loads(capsys.readouterr().out)
        assert [r["recipient"] for r in rows] == [b.address]
        assert "cannot connect" in rows[0]["last_error"] and rows[0]["attempts"] == 1
        assert _run(a_dir, "mail", "queue") == 0
        assert "cannot connect" in capsys.readouterr().out

        with pytest.raises(MeshError, match="refused the mail password"):
            await asyncio.to_thread(
                _run, a_dir, "mail", "send", "--to", b.address, "--password-stdin",
                stdin="wrong password\nx\n",
            )  # fmt: skip
        with pytest.raises(UsageError, match="MESH_MAIL_PASSWORD"):
            _run(a_dir, "mail", "send", "--to", b.address, stdin="x")
        with pytest.raises(UsageError, match="not on the mesh"):
            _run(a_dir, "mail", "send", "--to", "x@example.com", stdin="x")
    finally:
        await a.close()
        await b.close()
    with pytest.raises(MeshError, match="is the node running"):
        await asyncio.to_thread(
            _run, a_dir, "mail", "send", "--to", b.address, "--password-stdin",
            stdin=f"{PASSWORD}\nx\n",
        )  # fmt: skip


def test_queue_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(tmp_path, "mail", "queue") == 0
    assert "empty" in capsys.readouterr().out
