"""One call: its state machine, its peer connection on the mesh ICE transport, its
media, and what it reports (events, stats, the summary written to the call log).

The signaling I/O lives in :mod:`apps.video.service`; a :class:`Call` is told what
happened (``fire``) and asked to build offers and answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack

from apps.video import sdp
from apps.video.ice import MeshIceConnection, install_mesh_ice, mesh_connections
from apps.video.media import Gate, MediaSink, Source, TestPattern, Tone, open_source
from apps.video.signaling import CallMachine, CallState, Role, Trigger

if TYPE_CHECKING:
    from core import Node

__all__ = ["Call", "CallOptions", "new_call_id"]

log = logging.getLogger(__name__)

#: Results, as the CLI's ``--json`` ``result`` and the call log's ``result``.
RESULTS = ("answered", "rejected", "busy", "no-answer", "not-a-contact", "failed", "missed")


def new_call_id() -> str:
    return secrets.token_hex(16)


_RECEIVING = ("sendrecv", "recvonly")


@dataclass(frozen=True)
class CallOptions:
    source: str = "testsrc"
    audio_only: bool = False
    record_to: Path | None = None
    # Tracks supplied by the node process itself (the call page relays the browser's
    # camera and microphone): they replace ``source`` for their kinds.
    tracks: Mapping[str, MediaStreamTrack] = field(default_factory=dict, compare=False)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> CallOptions:
        record = params.get("record_to")
        return cls(
            source=str(params.get("source") or "testsrc"),
            audio_only=bool(params.get("audio_only", False)),
            record_to=Path(str(record)) if record else None,
        )


def _rtc_configuration() -> RTCConfiguration:
    # No ICE servers (aiortc's default is a public STUN server) and one bundled transport.
    return RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


class Call:
    """A call in either direction. ``on_state(call, old, new)`` hears every change."""

    def __init__(
        self,
        node: Node,
        role: Role,
        peer_key: bytes,
        peer_address: ipaddress.IPv6Address,
        *,
        call_id: str | None = None,
        media: tuple[str, ...] = ("audio", "video"),
        remote_name: str = "",
        on_state: Callable[[Call, CallState, CallState], None] | None = None,
    ) -> None:
        self.node = node
        self.id = call_id or new_call_id()
        self.role = role
        self.peer_key = peer_key
        self.peer_address = peer_address
        self.media = media
        self.remote_name = remote_name  # what the peer calls itself (unverified)
        self.alias: str | None = None  # what our contacts call the peer
        self.machine = CallMachine(role, on_change=self._changed)
        self._on_state = on_state
        self.started = time.time()
        self.dialed = time.monotonic()
        self.answered_at: float | None = None
        self.ended_at: float | None = None
        self.result: str | None = None
        self.detail = ""
        self.local_sdp = ""
        self.remote_sdp = ""
        self.dropped_candidates: list[str] = []
        self.remote_update: dict[str, Any] = {}
        self.local_update: dict[str, Any] = {"audio_muted": False, "video_off": False}
        self.pc: RTCPeerConnection | None = None
        self.gates: dict[str, Gate] = {}
        self.source: Source | None = None
        self.sink: MediaSink | None = None
        self.ice: list[MeshIceConnection] = []
        self.ended = asyncio.Event()
        self.connected = asyncio.Event()
        self.summary: dict[str, Any] | None = None
        self._last_stats: tuple[float, int] | None = None

    # -- state -----------------------------------------------------------------------
    @property
    def state(self) -> CallState:
        return self.machine.state

    def fire(self, trigger: Trigger, *, result: str | None = None, detail: str = "") -> bool:
        """Apply ``trigger`` if the table allows it now; False (and nothing) otherwise."""
        if not self.machine.can(trigger):
            return False
        if result is not None:
            self.result = result
            self.detail = detail
        self.machine.fire(trigger)
        return True

    def _changed(self, old: CallState, new: CallState) -> None:
        if new is CallState.CONNECTING:
            self.answered_at = time.time()
        if new is CallState.ENDED:
            self.ended_at = time.time()
            if self.result is None:
                self.result = "answered" if self.machine.answered else "failed"
            self.ended.set()
        if self._on_state is not None:
            self._on_state(self, old, new)

    # -- media and the peer connection ------------------------------------------------
    def _tracks(self, options: CallOptions, kinds: tuple[str, ...]) -> dict[str, Gate]:
        want_video = "video" in kinds and not options.audio_only
        given = options.tracks
        self.source = open_source(
            options.source,
            audio="audio" not in given,
            video=want_video and "video" not in given,
        )
        gates: dict[str, Gate] = {}
        fallbacks: dict[str, Callable[[], MediaStreamTrack]] = {
            "audio": Tone,
            "video": TestPattern,
        }
        for kind in kinds:
            if kind == "video" and not want_video:
                continue
            track = given.get(kind) or (self.source.audio if kind == "audio" else self.source.video)
            gate = Gate(kind, track or fallbacks[kind]())
            gate.muted = track is None  # a file without sound sends silence
            gates[kind] = gate
        return gates

    def _build_pc(self, options: CallOptions, kinds: tuple[str, ...]) -> RTCPeerConnection:
        self.gates = self._tracks(options, kinds)  # a bad source fails before any pc
        pc = RTCPeerConnection(_rtc_configuration())
        self.pc = pc
        for kind in kinds:
            gate = self.gates.get(kind)
            pc.addTransceiver(gate or kind, direction="sendrecv" if gate else "recvonly")
        self.ice = install_mesh_ice(pc, self.node, self.peer_address)
        self.sink = MediaSink(options.record_to)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            assert self.sink is not None
            self.sink.add(track)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState == "connected":
                self.connected.set()
            elif pc.connectionState == "failed":
                self.fire(Trigger.FAIL, result="failed", detail="media connection failed")

        return pc

    def _outgoing(self, pc: RTCPeerConnection) -> str:
        mesh_connections(pc)  # raises if any transport left the mesh
        text = sdp.outgoing(pc.localDescription.sdp, self.node.address)
        self.local_sdp = text
        return text

    async def offer(self, options: CallOptions) -> str:
        """Caller: build the peer connection and the (non-trickle) offer to send."""
        pc = self._build_pc(options, self.media)
        await pc.setLocalDescription(await pc.createOffer())  # gathers: non-trickle
        return self._outgoing(pc)

    async def accept_answer(self, answer: str) -> None:
        """Caller: apply the callee's answer (raises :class:`sdp.SdpError`)."""
        got = sdp.incoming(answer, self.peer_address)
        if not set(got.media) <= set(self.media):
            raise sdp.SdpError("the answer has media sections the offer did not")
        self.remote_sdp, self.dropped_candidates = got.sdp, list(got.dropped)
        assert self.pc is not None and self.sink is not None
        await self.pc.setRemoteDescription(RTCSessionDescription(got.sdp, "answer"))
        mesh_connections(self.pc)
        await self.sink.start()

    async def answer(self, offer: sdp.IncomingSdp, options: CallOptions) -> str:
        """Callee: build the peer connection from the (filtered) offer; the answer."""
        self.remote_sdp, self.dropped_candidates = offer.sdp, list(offer.dropped)
        pc = self._build_pc(options, offer.media)
        await pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
        mesh_connections(pc)
        assert self.sink is not None
        await self.sink.start()
        await pc.setLocalDescription(await pc.createAnswer())
        return self._outgoing(pc)

    # -- in-call changes --------------------------------------------------------------
    def update(
        self,
        *,
        audio_muted: bool | None = None,
        video_off: bool | None = None,
        source: str | None = None,
        tracks: Mapping[str, MediaStreamTrack] | None = None,
    ) -> dict[str, Any]:
        """Mute/unmute, camera off/on, switch to the source ``source`` or to ``tracks``
        the node process has (the call page's browser camera); returns what changed."""
        changed: dict[str, Any] = {}
        if audio_muted is not None and "audio" in self.gates:
            self.gates["audio"].muted = audio_muted
            changed["audio_muted"] = audio_muted
        if video_off is not None and "video" in self.gates:
            self.gates["video"].muted = video_off
            changed["video_off"] = video_off
        if source is not None:
            new = open_source(source, audio="audio" in self.gates, video="video" in self.gates)
            for kind, gate in self.gates.items():
                track = new.audio if kind == "audio" else new.video
                if track is not None:
                    gate.switch(track)
            old, self.source = self.source, new
            if old is not None:
                old.close()
            changed["source"] = source
        for kind, track in (tracks or {}).items():
            if kind in self.gates:
                self.gates[kind].switch(track)
                changed["source"] = "page"
        self.local_update.update(changed)
        return changed

    # -- reporting --------------------------------------------------------------------
    def setup_s(self) -> float | None:
        if self.sink is None:
            return None
        kind = self.sink.video if "video" in self.media else self.sink.audio
        if kind.first_at is None and self.sink.audio.first_at is not None:
            kind = self.sink.audio  # the callee sent no video
        return None if kind.first_at is None else round(kind.first_at - self.dialed, 3)

    async def stats(self) -> dict[str, Any]:
        """rtt_ms, loss, bitrate_kbps, fps, resolution, jitter_ms, from getStats."""
        out: dict[str, Any] = {
            "rtt_ms": None,
            "loss": None,
            "bitrate_kbps": None,
            "fps": None,
            "resolution": None,
            "jitter_ms": None,
        }
        if self.pc is None:
            return out
        with contextlib.suppress(Exception):  # getStats on a closing pc may trip
            report = await self.pc.getStats()
            received = lost = 0
            rtts: list[float] = []
            jitters: list[float] = []
            total_bytes = 0
            for item in report.values():
                kind = getattr(item, "type", "")
                if kind == "inbound-rtp":
                    received += item.packetsReceived
                    lost += max(item.packetsLost, 0)
                    rate = 90_000 if item.kind == "video" else 48_000
                    jitters.append(1000 * item.jitter / rate)
                elif kind == "remote-inbound-rtp" and item.roundTripTime is not None:
                    # RTCP's middle-32-bit clock can make a sub-ms RTT come out below 0
                    # (-44.67 ms was seen): such a sample measures nothing.
                    if item.roundTripTime >= 0:
                        rtts.append(1000 * item.roundTripTime)
                elif kind == "transport":
                    total_bytes = item.bytesReceived
            if rtts:
                out["rtt_ms"] = round(statistics.fmean(rtts), 2)
            if received + lost:
                out["loss"] = round(lost / (received + lost), 4)
            if jitters:
                out["jitter_ms"] = round(max(jitters), 2)
            now = time.monotonic()
            if self._last_stats is not None and now - self._last_stats[0] >= 1.0:
                seconds = now - self._last_stats[0]
                out["bitrate_kbps"] = round(
                    8 * (total_bytes - self._last_stats[1]) / seconds / 1000, 1
                )
            elif self.answered_at is not None:
                seconds = max(time.time() - self.answered_at, 0.001)
                out["bitrate_kbps"] = round(8 * total_bytes / seconds / 1000, 1)
            if self._last_stats is None or now - self._last_stats[0] >= 1.0:
                self._last_stats = (now, total_bytes)
        if self.sink is not None:
            fps = self.sink.video.fps() if "video" in self.media else None
            out["fps"] = None if fps is None else round(fps, 1)
            if self.sink.video.width:
                out["resolution"] = f"{self.sink.video.width}x{self.sink.video.height}"
        return out

    def receiving(self) -> list[str]:
        """The kinds the peer sends us, as negotiated (an audio-only answer sends no
        video to the caller): what a UI shows a picture for."""
        if self.pc is None:
            return []
        return sorted(
            {t.kind for t in self.pc.getTransceivers() if t.currentDirection in _RECEIVING}
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "direction": self.role.value,
            "peer": self.peer_key.hex(),
            "address": str(self.peer_address),
            "name": self.remote_name,
            "alias": self.alias,
            "media": list(self.media),
            "receiving": self.receiving(),
            "state": self.state.value,
            "result": self.result,
            "detail": self.detail,
            "started": self.started,
            "answered": self.answered_at,
            "remote": dict(self.remote_update),
            "local": dict(self.local_update),
        }

    async def finish(self) -> dict[str, Any]:
        """Close media and the peer connection (once); the call's summary."""
        if self.summary is not None:
            return self.summary
        stats = await self.stats()
        sink = self.sink
        summary = {
            **self.to_json(),
            "setup_s": self.setup_s(),
            "duration_s": round(self.ended_at - self.answered_at, 3)
            if self.ended_at is not None and self.answered_at is not None
            else 0.0,
            "video_frames_received": sink.video.frames if sink else 0,
            "audio_frames_received": sink.audio.frames if sink else 0,
            "local_candidates": sorted(set(sdp.addresses(self.local_sdp))),
            "remote_candidates": sorted(set(sdp.addresses(self.remote_sdp))),
            "dropped_candidates": self.dropped_candidates
            + [c for conn in self.ice for c in conn.counters.dropped_candidates],
            "ignored_packets": sum(conn.counters.ignored_packets for conn in self.ice),
            "stats": stats,
        }
        if sink is not None and sink.stamps:  # the peer sent the test pattern
            ordered = sorted(sink.latencies_ms)
            summary["latency_ms_p50"] = ordered[len(ordered) // 2]
            summary["pattern_frames"] = {
                "received": len(set(sink.stamps)),
                "sent": max(sink.stamps) - min(sink.stamps) + 1,
            }
        self.summary = summary
        await self.close()
        if sink is not None and sink.recorder is not None:
            summary["recording"] = sink.recorder.report()
        return summary

    async def close(self) -> None:
        if self.pc is not None:
            pc, self.pc = self.pc, None
            with contextlib.suppress(Exception):
                await pc.close()
        if self.source is not None:
            self.source.close()
            self.source = None
        for gate in self.gates.values():
            gate.stop()
        self.gates = {}
        if self.sink is not None:
            sink, self.sink = self.sink, None
            await sink.close()
