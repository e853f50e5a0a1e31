"""`mesh call` for people names the other side by our contacts' alias (asked of the
node), never prints ``None``, and leaves ``--json`` as it was. Against a stand-in node
(tests/core/fake_control.py): no media, no mesh."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from core.cli.main import main
from tests.core.fake_control import fake_node, short_data_dir

BOB = "b0" * 32
CAROL = "c0" * 32
CONTACTS = [
    {"key": BOB, "alias": "bob", "trust": "trusted"},
    {"key": CAROL, "alias": None, "trust": "unknown"},
]
LOG = [
    {
        "seq": 2, "id": "c2", "direction": "incoming", "peer": BOB, "name": "Robert",
        "media": ["audio"], "started": 1_700_000_000.0, "answered": None, "ended": None,
        "duration_s": 0.0, "result": "no-answer", "detail": "", "outcome": "missed",
    },
    {
        "seq": 1, "id": "c1", "direction": "outgoing", "peer": CAROL, "name": "",
        "media": ["audio", "video"], "started": 1_699_999_000.0, "answered": 1_699_999_001.0,
        "ended": 1_699_999_031.0, "duration_s": 30.0, "result": "answered", "detail": "",
        "outcome": "answered",
    },
]  # fmt: skip


data = pytest.fixture(short_data_dir, name="data")


def _mesh(data: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--data-dir", str(data), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_call_log_shows_our_alias_instead_of_the_key(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with fake_node(data, {"call.log": LOG, "contacts.list": CONTACTS}):
        code, out, _ = _mesh(data, capsys, "call", "log")
    assert code == 0
    bob, carol = out.splitlines()
    assert " ← bob " in bob and "Robert" not in bob and BOB[:16] not in bob
    assert "missed (no-answer)" in bob
    assert f" → {CAROL[:16]}…" in carol and "30.0 s" in carol
    assert "None" not in out


def test_call_log_never_takes_a_claimed_name_for_a_contact(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A name comes only from our contacts; what a caller says it is called shows as its
    claim beside its key's start (a stranger saying "ana" is not our ana)."""
    with fake_node(data, {"call.log": LOG, "contacts.list": []}):
        _, out, _ = _mesh(data, capsys, "call", "log")
    bob, carol = out.splitlines()
    assert f' ← {BOB[:16]}… (says "Robert") ' in bob
    assert f" → {CAROL[:16]}…" in carol
    posing = [{**LOG[0], "name": "ana\u202e\x7f"}]
    with fake_node(data, {"call.log": posing, "contacts.list": [CONTACTS[1]]}):
        _, out, _ = _mesh(data, capsys, "call", "log")
    assert f'{BOB[:16]}… (says "ana\\u202e\\x7f")' in out and " ana " not in out


def test_call_log_json_is_the_nodes_rows_unchanged(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with fake_node(data, {"call.log": LOG, "contacts.list": CONTACTS}) as called:
        code, out, _ = _mesh(data, capsys, "call", "log", "--json")
    assert code == 0 and json.loads(out) == LOG
    assert called == ["call.log"]  # no contacts asked for: JSON keeps raw keys


def test_call_log_row_missing_fields_prints_dashes_not_none(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    row = {"id": "c3", "direction": "outgoing", "peer": CAROL, "name": None, "started": None,
           "duration_s": None, "result": "failed", "outcome": "failed"}  # fmt: skip
    with fake_node(data, {"call.log": [row], "contacts.list": CONTACTS}):
        _, out, _ = _mesh(data, capsys, "call", "log")
    assert "None" not in out and "failed" in out and "- s" in out


def _ended(**fields: Any) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "id": "c9", "direction": "outgoing", "peer": BOB, "name": "", "alias": None,
        "state": "ended", "result": "rejected", "detail": "declined", "setup_s": None,
        "duration_s": 0.0, "video_frames_received": 0, "audio_frames_received": 0,
        "local_candidates": [], "remote_candidates": [], "stats": {}, "final": True,
    }  # fmt: skip
    summary.update(fields)
    return summary


def test_call_summary_names_the_alias_and_omits_what_was_not_measured(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = {
        "call.place": {"id": "c9", "state": "calling"},
        "call.status": _ended(),
        "contacts.list": CONTACTS,
    }
    with fake_node(data, answers):
        code, out, _ = _mesh(data, capsys, "call", BOB)
    assert code == 3
    summary, stats = out.splitlines()
    assert summary == "call rejected: bob, 0.0 s, 0 video / 0 audio frames (declined)"
    assert stats == "  no media stats"
    assert "None" not in out


def test_call_summary_stats_line_leaves_out_unmeasured_fields(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stats = {"rtt_ms": 12.5, "loss": 0.0, "bitrate_kbps": 800.0, "fps": None, "jitter_ms": 3.1}
    answers = {
        "call.place": {"id": "c9", "state": "calling"},
        "call.status": _ended(result="answered", detail="", setup_s=0.4, stats=stats),
        "contacts.list": [],
    }
    with fake_node(data, answers):
        code, out, _ = _mesh(data, capsys, "call", BOB)
    assert code == 0
    assert out.splitlines()[0].startswith(f"call answered: {BOB[:16]}…, 0.0 s, setup 0.4 s")
    assert out.splitlines()[1] == "  rtt 12.5 ms, loss 0.0, 800.0 kbit/s, jitter 3.1 ms"


def test_call_summary_json_is_unchanged(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    answers = {
        "call.place": {"id": "c9", "state": "calling"},
        "call.status": _ended(),
        "contacts.list": CONTACTS,
    }
    with fake_node(data, answers) as called:
        code, out, _ = _mesh(data, capsys, "call", BOB, "--json")
    result = json.loads(out)
    assert code == 3 and result["peer"] == BOB and result["setup_s"] is None
    assert "contacts.list" not in called


def test_hangup_says_with_whom(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    answers = {"call.hangup": _ended(state="ended"), "contacts.list": CONTACTS}
    with fake_node(data, answers):
        code, out, _ = _mesh(data, capsys, "call", "hangup")
    assert code == 0 and out == "hangup: call c9 with bob ended\n"
