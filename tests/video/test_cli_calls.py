"""`mesh call` as scripts use it: two `mesh up` node processes (embedded backend, peered
on loopback, LAN discovery off), the CLI a control API client of each."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.video.procs import NodeUp, run_mesh, spawn_mesh

pytestmark = pytest.mark.timeout(150)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeUp, NodeUp]]:
    base = tmp_path_factory.mktemp("calls")
    a = NodeUp(base / "a", "--listen", "tcp://127.0.0.1:0")
    try:
        b = NodeUp(base / "b", "--peer", a.status["backend_status"]["listening"][0])
        try:
            for _ in range(30):  # the first packets to a new node can go while paths settle
                if run_mesh(b.data, "ping", "-c", "1", "-W", "1", a.status["key"]).returncode == 0:
                    break
            yield a, b
        finally:
            b.stop()
    finally:
        a.stop()


def _finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


def test_mesh_up_serves_signaling_on_mesh_port_5311(nodes: tuple[NodeUp, NodeUp]) -> None:
    a, _ = nodes
    video = a.status["services"]["video"]
    assert video["signaling"] == f"[{a.status['address']}]:5311"


def test_mesh_call_answered_prints_the_json_contract_and_exits_0(
    nodes: tuple[NodeUp, NodeUp],
) -> None:
    a, b = nodes
    answer = spawn_mesh(b.data, "call", "answer", "--auto", "--count", "1", "--json")
    time.sleep(0.5)
    code, out, err = _finish(
        spawn_mesh(a.data, "call", b.status["key"], "--duration", "2", "--json")
    )
    assert code == 0, err
    result = json.loads(out)
    contract = {"result", "setup_s", "duration_s", "video_frames_received", "stats"}
    contract |= {"audio_frames_received", "local_candidates", "remote_candidates"}
    assert contract <= set(result)
    assert result["result"] == "answered"
    assert result["duration_s"] >= 2 and result["video_frames_received"] > 20
    assert result["local_candidates"] == [a.status["address"]]
    assert result["remote_candidates"] == [b.status["address"]]
    assert set(result["stats"]) >= {"rtt_ms", "loss", "bitrate_kbps", "fps"}
    a_code, a_out, a_err = _finish(answer)
    assert a_code == 0, a_err
    assert json.loads(a_out.splitlines()[-1])["result"] == "answered"
    log = json.loads(run_mesh(b.data, "call", "log", "--json").stdout)
    assert (log[0]["direction"], log[0]["result"]) == ("incoming", "answered")


def test_mesh_call_rejected_exits_3(nodes: tuple[NodeUp, NodeUp]) -> None:
    a, b = nodes
    # Not on a terminal and without --auto, `answer` declines what rings.
    answer = spawn_mesh(b.data, "call", "answer", "--count", "1")
    time.sleep(0.5)
    code, out, err = _finish(spawn_mesh(a.data, "call", b.status["key"], "--json"))
    assert code == 3, err
    assert json.loads(out)["result"] == "rejected"
    assert _finish(answer)[0] == 0


def test_mesh_call_with_a_bad_flag_mix_is_a_usage_error(nodes: tuple[NodeUp, NodeUp]) -> None:
    a, _ = nodes
    done = run_mesh(a.data, "call", "hangup", "--duration", "3")
    assert done.returncode == 2 and "--duration goes with mesh call CONTACT" in done.stderr
    assert "no call in progress" in run_mesh(a.data, "call", "hangup").stderr
    done = run_mesh(a.data, "call", "log", "--new-token")
    assert done.returncode == 2 and "--new-token goes with mesh call page" in done.stderr
    assert os.path.exists(a.data / "calls.db")


def test_mesh_call_for_people_shows_states_live_stats_and_a_summary(
    nodes: tuple[NodeUp, NodeUp],
) -> None:
    a, b = nodes
    answer = spawn_mesh(b.data, "call", "answer", "--auto", "--count", "1")
    time.sleep(0.5)
    code, out, err = _finish(spawn_mesh(a.data, "call", b.status["key"], "--duration", "6"))
    assert code == 0, err
    assert "call active" in err and "call ended" in err
    assert "  rtt " in err and "640x480" in err  # the live stats line, every 5 s
    assert out.startswith("call answered: ") and "video /" in out
    assert _finish(answer)[0] == 0


def test_mesh_call_by_contact_alias_and_an_unknown_name_is_a_usage_error(
    nodes: tuple[NodeUp, NodeUp],
) -> None:
    a, b = nodes
    added = run_mesh(a.data, "contacts", "add", b.status["key"], "--alias", "bob")
    assert added.returncode == 0, added.stderr
    answer = spawn_mesh(b.data, "call", "answer", "--auto", "--count", "1", "--json")
    time.sleep(0.5)
    code, out, err = _finish(
        spawn_mesh(a.data, "call", "bob", "--audio-only", "--duration", "1", "--json")
    )
    assert code == 0, err
    result = json.loads(out)
    assert (result["result"], result["alias"], result["peer"]) == (
        "answered", "bob", b.status["key"],
    )  # fmt: skip
    assert result["media"] == ["audio"] and result["audio_frames_received"] > 0
    assert _finish(answer)[0] == 0
    unknown = run_mesh(a.data, "call", "nobody-here")
    assert unknown.returncode == 2 and "not a contact" in unknown.stderr


def test_mesh_call_mute_unmute_and_camera_act_on_the_call_in_progress(
    nodes: tuple[NodeUp, NodeUp],
) -> None:
    a, b = nodes
    done = run_mesh(a.data, "call", "mute")  # no call: said, not ignored
    assert done.returncode == 2 and "no call in progress" in done.stderr
    done = run_mesh(a.data, "call", "camera", "sideways")
    assert done.returncode == 2 and "camera takes on or off" in done.stderr
    answer = spawn_mesh(b.data, "call", "answer", "--auto", "--count", "1", "--json")
    time.sleep(0.5)
    caller = spawn_mesh(a.data, "call", b.status["key"], "--duration", "8", "--json")
    try:
        muted: dict[str, object] = {}
        for _ in range(100):  # until the call is up (a mute before it is refused)
            done = run_mesh(a.data, "call", "mute", "--json")
            if done.returncode == 0:
                muted = json.loads(done.stdout)
                break
            time.sleep(0.2)
        assert muted["local"] == {"audio_muted": True, "video_off": False}, muted
        said = run_mesh(a.data, "call", "camera", "off")
        assert said.returncode == 0 and said.stdout.startswith("camera off: call "), said
        unmuted = json.loads(run_mesh(a.data, "call", "unmute", "--json").stdout)
        assert unmuted["local"] == {"audio_muted": False, "video_off": True}
        on = json.loads(run_mesh(a.data, "call", "camera", "on", "--json").stdout)
        assert on["local"]["video_off"] is False and on["changed"] == {"video_off": False}
    finally:
        _finish(caller)
        _finish(answer)
