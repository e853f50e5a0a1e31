"""`mesh mail queue` for people names recipients by our contacts' alias (asked of the
node), never prints ``None``, and leaves ``--json`` as it was. Against a stand-in node
(tests/core/fake_control.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from core.cli.main import main
from tests.core.fake_control import fake_node, short_data_dir

BOB, CAROL = "b0" * 32, "c0" * 32
CONTACTS = [{"key": BOB, "alias": "bob", "trust": "trusted"}]


def _row(recipient: str, **fields: object) -> dict[str, object]:
    row: dict[str, object] = {
        "delivery": 1, "message": 1, "message_id": "<m1@x.mesh>", "recipient": recipient,
        "attempts": 2, "queued_at": time.time() - 60, "next_attempt": time.time() + 120,
        "last_error": "no route to the node",
    }  # fmt: skip
    row.update(fields)
    return row


data = pytest.fixture(short_data_dir, name="data")


def test_queue_shows_our_alias_for_a_known_recipient_and_the_address_otherwise(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [_row(f"{BOB}@mesh"), _row(f"{CAROL}@mesh", last_error=None, message_id=None)]
    with fake_node(data, {"mail.queue": rows, "contacts.list": CONTACTS}):
        assert main(["--data-dir", str(data), "mail", "queue"]) == 0
    bob, carol = capsys.readouterr().out.splitlines()
    assert bob.startswith("bob  <m1@x.mesh>  attempts=2  next in 1") and BOB not in bob
    assert bob.endswith("last error: no route to the node")
    assert carol.startswith(f"{CAROL}@mesh  -  attempts=2") and carol.endswith("last error: -")
    assert "None" not in bob + carol


def test_queue_json_is_the_nodes_rows_unchanged(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [_row(f"{BOB}@mesh")]
    with fake_node(data, {"mail.queue": rows, "contacts.list": CONTACTS}) as called:
        assert main(["--data-dir", str(data), "mail", "queue", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == rows
    assert called == ["mail.queue"]


def test_queue_without_contacts_from_the_node_shows_addresses(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with fake_node(data, {"mail.queue": [_row(f"{BOB}@mesh", next_attempt=None)]}):
        assert main(["--data-dir", str(data), "mail", "queue"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{BOB}@mesh  <m1@x.mesh>") and "next -" in out
