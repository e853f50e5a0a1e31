"""Calls plug into `mesh up` and the CLI through entry points; bad settings say so."""

from __future__ import annotations

from pathlib import Path

import pytest

from apps.video import cli
from apps.video.service import VideoConfig
from apps.video.signaling import SIGNALING_PORT
from core.cli.main import build_parser
from core.errors import UsageError
from core.service import discover_services


def test_the_video_service_and_the_call_command_are_installed() -> None:
    assert "video" in {p.name for p in discover_services()}
    args = build_parser().parse_args(["call", "someone", "--audio-only", "--json"])
    assert args.func is cli.cmd_call and args.audio_only and args.json


def test_defaults_are_port_5311_contacts_only_and_45_s_ringing() -> None:
    config = VideoConfig.from_mapping({})
    assert (config.port, config.ring, config.ring_timeout) == (SIGNALING_PORT, "contacts", 45.0)
    assert SIGNALING_PORT == 5311


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"ring": "friends"}, 'ring must be "contacts" or "everyone"'),
        ({"ring_timeout": 0}, "ring_timeout must be > 0"),
        ({"rng": "everyone"}, "unknown settings: rng"),
        ({"port": 70000}, "port must be 0-65535"),
    ],
)
def test_bad_video_settings_are_refused_with_the_reason(
    raw: dict[str, object], reason: str
) -> None:
    with pytest.raises(UsageError, match=reason):
        VideoConfig.from_mapping(raw)


def test_exit_codes_are_the_documented_ones(tmp_path: Path) -> None:
    assert cli.EXIT_CODES == {
        "answered": 0, "rejected": 3, "busy": 4, "no-answer": 5,
        "not-a-contact": 6, "failed": 1, "missed": 5,
    }  # fmt: skip
    assert cli.summary_json({"result": "missed"})["result"] == "no-answer"
