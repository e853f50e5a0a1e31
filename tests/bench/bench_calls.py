"""Calls side by side: the embedded backend, the real-daemon lab, and a direct aiortc
call on loopback (the ceiling).

    sudo .venv/bin/python tests/bench/bench_calls.py [--seconds 60] [--paths embedded,daemon,direct]

Each path makes one 640x480 @ 30 fps test-pattern call (both directions send pattern
and tone) for ``--seconds`` and prints:

- setup: dial → first decoded remote video frame, at the caller (target < 1.5 s);
- delivered: distinct pattern frames the caller decoded / frames the callee's pattern
  drew over the call (from the frame numbers coded into the pattern; target ≥ 97 %);
- latency p50: receive time minus the send time coded into each frame (target < 150 ms);
- CPU per side: each node process's CPU time over the call / wall time (target < 50 %
  of a core). The daemon path does not count the daemons; the direct path runs both
  peers in one process and shows half of it per side.

``embedded``: two ``mesh up --backend embedded`` processes peered over loopback TCP,
driven by ``mesh call`` / ``mesh call answer --auto``. ``daemon``: the same CLI with
``mesh up --backend yggdrasil --managed`` in two network namespaces (needs root and
/usr/sbin/yggdrasil; namespaces ``ca-…``). ``direct``: two aiortc peer connections in
this process, host candidates on loopback. ``browser``: the call page (two nodes in this
process, each page in the system's headless Chromium): A's page dials B with A's node-side
test pattern, B's page accepts at once with its (fake) camera; it prints dial → first
remote frame presented in the callee's page (target < 2 s), the latency to B's page from
the pattern's stamps read in the page against B's node (the relay's extra latency), and
the CPU of the node process during the page call against an engine-only call of the same
length (the relay's CPU; Chromium's own CPU on the side). ``resume``: mute/unmute and
camera off/on over and over for ``--seconds`` in a call between two in-process embedded
nodes (A sends a stereo tone, as a browser's microphone reaches its node): A's update →
the first sounding frame / the first pattern frame at B, p50 and max (target < 500 ms).
Not a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from aiortc import RTCConfiguration, RTCPeerConnection

from apps.video.media import Gate, MediaSink, TestPattern, Tone
from tests.lab.lab import REPO, Lab, lab_available, mesh_cli
from tests.video.procs import MESH, NodeUp, cpu_seconds, run_mesh

PORT = 12511


def _row(path: str, summary: dict[str, Any], cpu: tuple[float, float]) -> dict[str, Any]:
    frames = summary.get("pattern_frames") or {}
    sent = frames.get("sent") or 0
    return {
        "path": path,
        "setup_s": summary.get("setup_s"),
        "delivered_pct": round(100 * frames.get("received", 0) / sent, 1) if sent else None,
        "frames": f"{frames.get('received')}/{sent}",
        "latency_p50_ms": summary.get("latency_ms_p50"),
        "cpu_caller_pct": round(cpu[0], 1),
        "cpu_callee_pct": round(cpu[1], 1),
        "fps": (summary.get("stats") or {}).get("fps"),
        "rtt_ms": (summary.get("stats") or {}).get("rtt_ms"),
        "bitrate_kbps": (summary.get("stats") or {}).get("bitrate_kbps"),
    }


def _cli_call(
    caller: Path, callee: Path, callee_key: str, seconds: float, pids: tuple[int, int]
) -> tuple[dict[str, Any], tuple[float, float]]:
    """One `mesh call` from ``caller`` to ``callee`` (auto-answered), with the CPU each
    node process used over it."""
    answer = subprocess.Popen(
        [*MESH, "--data-dir", str(callee), "call", "answer", "--auto", "--count", "1", "--json"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(0.5)
        cpu0 = [cpu_seconds(p) for p in pids]
        wall0 = time.monotonic()
        done = mesh_cli(
            caller, "call", callee_key, "--duration", str(seconds), "--json",
            timeout=seconds + 120,
        )  # fmt: skip
        wall = time.monotonic() - wall0
        cpu = tuple(100 * (cpu_seconds(p) - c) / wall for p, c in zip(pids, cpu0, strict=True))
        answer.communicate(timeout=60)
    finally:
        if answer.poll() is None:
            answer.kill()
            answer.wait()
    if done.returncode != 0:
        raise RuntimeError(f"call failed: {done.stdout} {done.stderr}")
    return json.loads(done.stdout), (cpu[0], cpu[1])


def bench_embedded(seconds: float, idle_tab: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ca-bench-") as tmp, contextlib.ExitStack() as stack:
        a = NodeUp(Path(tmp) / "a", "--listen", "tcp://127.0.0.1:0")
        try:
            b = NodeUp(Path(tmp) / "b", "--peer", a.status["backend_status"]["listening"][0])
            try:
                for _ in range(30):
                    if run_mesh(a.data, "ping", "-c1", "-W1", b.status["key"]).returncode == 0:
                        break
                if idle_tab:  # A's call page open in a browser tab nobody looks at
                    url = run_mesh(a.data, "call", "page").stdout.strip()
                    stack.enter_context(_IdleTab(Path(tmp), url))
                summary, cpu = _cli_call(
                    a.data, b.data, b.status["key"], seconds, (a.proc.pid, b.proc.pid)
                )
            finally:
                b.stop()
        finally:
            a.stop()
    return _row("embedded, an idle page tab on A" if idle_tab else "embedded", summary, cpu)


class _IdleTab:
    """Chromium (in a thread of its own) with one tab on a call page, left alone."""

    def __init__(self, root: Path, url: str) -> None:
        import threading

        self.root, self.url = root / "idle-browser", url
        self._opened = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        from tests.video.page.cdp import Chromium

        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with Chromium(self.root) as browser:
            tab = await browser.open(self.url)
            await tab.wait("window.meshCall && meshCall.mediaReady", 30)
            self._opened.set()
            await self._stop.wait()

    def __enter__(self) -> _IdleTab:
        self._thread.start()
        if not self._opened.wait(60):
            raise RuntimeError("the idle call page did not open")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


class _CallLab(Lab):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.prefix = "ca-" + self.prefix.split("-", 1)[1]


def bench_daemon(seconds: float) -> dict[str, Any]:
    ok, why = lab_available()
    if not ok:
        raise RuntimeError(why)
    up_args = ("--backend", "yggdrasil", "--managed", "--if-name", "ca-tun", "--no-multicast")
    with _CallLab("bnc") as lab:
        ha, hb = lab.host("a"), lab.host("b")
        lab.link(ha, hb)
        da, db = lab.dir / "node-a", lab.dir / "node-b"
        for d in (da, db):
            mesh_cli(d, "init")
        up_a = ha.mesh_up(da, *up_args, "--ring", "everyone", "--listen", f"tls://[::]:{PORT}")
        up_b = hb.mesh_up(db, *up_args, "--ring", "everyone", "--peer", ha.peer_uri(hb, PORT))
        try:
            status: dict[str, Any] = {}
            for _ in range(100):
                status = json.loads(mesh_cli(db, "status", "--json").stdout or "{}")
                if any(p["up"] for p in status.get("peers", [])):
                    break
                time.sleep(0.3)
            key_b = str(status["key"])
            for _ in range(30):
                if mesh_cli(da, "ping", "-c1", "-W1", key_b).returncode == 0:
                    break
            # `ip netns exec` execs the node's Python in place: these are the nodes' pids.
            pids = (up_a.proc.pid, up_b.proc.pid)
            summary, cpu = _cli_call(da, db, key_b, seconds, pids)
        finally:
            up_b.stop()
            up_a.stop()
    return _row("daemon", summary, cpu)


async def _direct(seconds: float) -> tuple[dict[str, Any], float]:
    pcs = [RTCPeerConnection(RTCConfiguration(iceServers=[])) for _ in range(2)]
    sinks = [MediaSink(), MediaSink()]
    patterns = [TestPattern(), TestPattern()]
    for pc, sink, pattern in zip(pcs, sinks, patterns, strict=True):
        pc.addTransceiver(Gate("audio", Tone()), direction="sendrecv")
        pc.addTransceiver(Gate("video", pattern), direction="sendrecv")
        pc.on("track", sink.add)
    cpu0, wall0 = time.process_time(), time.monotonic()
    await pcs[0].setLocalDescription(await pcs[0].createOffer())
    await pcs[1].setRemoteDescription(pcs[0].localDescription)
    await pcs[1].setLocalDescription(await pcs[1].createAnswer())
    await pcs[0].setRemoteDescription(pcs[1].localDescription)
    await asyncio.wait_for(sinks[0].first_video.wait(), 20)
    assert sinks[0].video.first_at is not None
    setup = sinks[0].video.first_at - wall0
    await asyncio.sleep(seconds)
    cpu = 100 * (time.process_time() - cpu0) / (time.monotonic() - wall0)
    stamps = sinks[0].stamps
    ordered = sorted(sinks[0].latencies_ms)
    summary = {
        "setup_s": round(setup, 3),
        "pattern_frames": {"received": len(set(stamps)), "sent": max(stamps) - min(stamps) + 1},
        "latency_ms_p50": ordered[len(ordered) // 2],
        "stats": {"fps": round(sinks[0].video.fps() or 0.0, 1)},
    }
    for pc in pcs:
        await pc.close()
    for sink in sinks:
        await sink.close()
    return summary, cpu


def _tree_cpu(root: int) -> float:
    """CPU seconds of ``root`` and every process under it (Chromium's renderers, GPU...)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    total = 0.0
    for pid in parents:
        walk = pid
        while walk not in (0, 1, root) and walk in parents:
            walk = parents[walk]
        if walk == root:
            with contextlib.suppress(OSError):
                total += cpu_seconds(pid)
    return total


async def _browser(seconds: float) -> dict[str, Any]:
    from apps.video.call import CallOptions
    from tests.video.page.harness import page_pair

    with tempfile.TemporaryDirectory(prefix="cp-bench-") as tmp:
        async with page_pair(Path(tmp)) as pair:
            browser_pid = pair.browser.proc.pid if pair.browser.proc else 0
            # The same call without pages: the CPU baseline of the engine alone.
            cpu0, wall0 = time.process_time(), time.monotonic()
            call = await pair.call_a.place(pair.b.key.hex(), CallOptions())
            while (ringing := pair.call_b.current()) is None or ringing.state.value != "ringing":  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            await pair.call_b.control_methods()["call.answer"]({})
            await asyncio.sleep(seconds)
            engine_cpu = 100 * (time.process_time() - cpu0) / (time.monotonic() - wall0)
            await pair.call_a.control_methods()["call.hangup"]({"id": call.id})
            while pair.call_a.current() or pair.call_b.current():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            tab_b = await pair.browser.open(pair.url(pair.call_b))
            tab_a = await pair.browser.open(pair.url(pair.call_a))
            for tab in (tab_a, tab_b):
                await tab.wait("window.meshCall && meshCall.mediaReady", 30)
            await tab_b.evaluate("meshCall.readStamps = true")
            cpu0, wall0, chrome0 = time.process_time(), time.monotonic(), _tree_cpu(browser_pid)
            dialed = time.time()
            await tab_a.evaluate(
                f"send({{op: 'place', contact: '{pair.b.key.hex()}', source: 'testsrc'}})"
            )
            await tab_b.wait("meshCall.view === 'incoming'", 30, every=0.02)
            answered = time.time()
            await tab_b.click("#accept-video")
            first = await tab_b.wait("meshCall.firstFrameAt", 30, every=0.02)
            await asyncio.sleep(seconds)
            wall = time.monotonic() - wall0
            page_cpu = 100 * (time.process_time() - cpu0) / wall
            chrome_cpu = 100 * (_tree_cpu(browser_pid) - chrome0) / wall
            in_page = sorted(await tab_b.evaluate("meshCall.latencies"))
            frames = await tab_b.evaluate("meshCall.stampFrames")
            current = pair.call_b.current()
            assert current is not None and current.sink is not None
            at_node = sorted(current.sink.latencies_ms)
            stats = await current.stats()
            await tab_b.evaluate("document.getElementById('hangup').click()")
            await tab_a.wait("meshCall.view === 'ended'", 30)
    p50 = in_page[len(in_page) // 2] if in_page else None
    node_p50 = at_node[len(at_node) // 2] if at_node else None
    return {
        "path": "browser page (relay)",
        "setup_s": round(first / 1000 - dialed, 3),
        "answer_to_frame_s": round(first / 1000 - answered, 3),
        "frames": f"{len(set(frames))}/{max(frames) - min(frames) + 1}" if frames else None,
        "delivered_pct": round(100 * len(set(frames)) / (max(frames) - min(frames) + 1), 1)
        if frames
        else None,
        "latency_p50_ms": p50,
        "node_latency_p50_ms": node_p50,
        "relay_extra_ms": p50 - node_p50 if p50 is not None and node_p50 is not None else None,
        "cpu_caller_pct": round(page_cpu / 2, 1),
        "cpu_callee_pct": round(page_cpu / 2, 1),
        "relay_cpu_pct": round(page_cpu - engine_cpu, 1),
        "engine_only_cpu_pct": round(engine_cpu, 1),
        "chromium_cpu_pct": round(chrome_cpu, 1),
        "fps": stats.get("fps"),
        "rtt_ms": stats.get("rtt_ms"),
        "bitrate_kbps": stats.get("bitrate_kbps"),
    }


async def _resumes(seconds: float) -> dict[str, Any]:
    """Mute/unmute and camera off/on, over and over, in a call between two embedded
    nodes in this process (A sends a stereo tone, as a browser's microphone reaches the
    node, and its test pattern): from A's ``call.update`` to the first frame with sound
    / the first pattern frame decoded at B."""
    from apps.video.call import CallOptions
    from apps.video.service import CallService, VideoConfig
    from core.testing import mem_mesh
    from tests.video.helpers import StereoTone

    async def until(check: Callable[[], bool]) -> float:
        start = time.monotonic()
        while not check():
            if time.monotonic() - start > 10:
                raise TimeoutError("media did not come back within 10 s")
            await asyncio.sleep(0.002)
        return time.monotonic() - start

    sound_s: list[float] = []
    picture_s: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bc-resume-") as tmp:
        root = Path(tmp)
        async with mem_mesh(2, root) as mesh:
            a, b = mesh[0], mesh[1]
            await a.contacts.add(b.key, alias="bob")
            await b.contacts.add(a.key, alias="alice")
            call_a = CallService(a, VideoConfig.from_mapping({}), root / "video-a")
            call_b = CallService(b, VideoConfig.from_mapping({}), root / "video-b")
            await call_a.start()
            await call_b.start()
            try:
                await call_a.place(b.key.hex(), CallOptions(tracks={"audio": StereoTone()}))
                await until(
                    lambda: (c := call_b.current()) is not None and c.state.value == "ringing"
                )
                await call_b.control_methods()["call.answer"]({})
                current = call_b.current()
                assert current is not None and current.sink is not None
                sink = current.sink
                await until(lambda: sink.audio.sounding > 10 and len(sink.stamps) > 10)
                update = call_a.control_methods()["call.update"]
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline or len(sound_s) < 5:
                    quiet = sink.audio.quiet
                    await update({"audio_muted": True, "video_off": True})
                    await until(lambda q=quiet: sink.audio.quiet > q + 10)
                    await asyncio.sleep(0.2)
                    sounding, stamps = sink.audio.sounding, len(sink.stamps)
                    await update({"audio_muted": False, "video_off": False})
                    sound = until(lambda n=sounding: sink.audio.sounding > n)
                    picture = until(lambda n=stamps: len(sink.stamps) > n)
                    took = await asyncio.gather(sound, picture)
                    sound_s.append(took[0])
                    picture_s.append(took[1])
                await call_a.control_methods()["call.hangup"]({})
            finally:
                await call_b.close()
                await call_a.close()
    sound_s.sort()
    picture_s.sort()
    return {
        "path": "mute/camera resume (embedded, in process)",
        "toggles": len(sound_s),
        "sound_back_p50_ms": round(1000 * sound_s[len(sound_s) // 2]),
        "sound_back_max_ms": round(1000 * sound_s[-1]),
        "picture_back_p50_ms": round(1000 * picture_s[len(picture_s) // 2]),
        "picture_back_max_ms": round(1000 * picture_s[-1]),
    }


def bench_resume(seconds: float) -> dict[str, Any]:
    return asyncio.run(_resumes(seconds))


def bench_browser(seconds: float) -> dict[str, Any]:
    return asyncio.run(_browser(seconds))


def bench_direct(seconds: float) -> dict[str, Any]:
    summary, cpu = asyncio.run(_direct(seconds))
    return _row("direct aiortc (loopback)", summary, (cpu / 2, cpu / 2))


PATHS: dict[str, Callable[[float], dict[str, Any]]] = {
    "embedded": bench_embedded,
    "idle-tab": lambda seconds: bench_embedded(seconds, idle_tab=True),
    "daemon": bench_daemon,
    "direct": bench_direct,
    "browser": bench_browser,
    "resume": bench_resume,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--paths", default="embedded,idle-tab,daemon,direct,browser,resume")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    rows = []
    for name in args.paths.split(","):
        print(f"… {name}: {args.seconds:g} s call", file=sys.stderr, flush=True)
        try:
            rows.append(PATHS[name](args.seconds))
        except Exception as exc:  # one path failing still shows the others
            rows.append({"path": name, "error": str(exc)[:300]})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cols = ("path", "setup_s", "delivered_pct", "frames", "latency_p50_ms",
            "cpu_caller_pct", "cpu_callee_pct", "fps", "rtt_ms", "bitrate_kbps")  # fmt: skip
    print(" | ".join(cols))
    for row in rows:
        if "error" in row:
            print(f"{row['path']} | error: {row['error']}")
            continue
        if not any(c in row for c in cols[1:]):  # the resume row: figures of its own
            print(f"{row['path']}: " + ", ".join(f"{k} {v}" for k, v in row.items() if k != "path"))
            continue
        print(" | ".join(str(row.get(c)) for c in cols))
        extra = {k: v for k, v in row.items() if k not in cols}
        if extra:  # the browser path's relay figures
            print("  " + ", ".join(f"{k} {v}" for k, v in extra.items()))
    print(
        "targets: setup < 1.5 s, delivered ≥ 97 %, latency p50 < 150 ms, CPU < 50 % per side,"
        " media back after unmute / camera on < 500 ms",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(REPO))
    sys.exit(main())
