"""The browser leg of a page call: a WebRTC connection on loopback between the page's
``RTCPeerConnection`` and one of the node's (aiortc), with no ICE servers.

- The node's side gathers exactly one host candidate per component, on ``127.0.0.1``
  (aioice skips loopback when it gathers, and would otherwise offer every interface):
  :class:`LoopbackIce` binds its sockets to ``127.0.0.1`` alone, so nothing it receives
  can come from beyond this machine.
- The browser's offer is cut down to loopback candidates (:func:`loopback_only`) before
  the node sees it; the node's answer names only ``127.0.0.1``. The browser never sees
  the mesh peer's address: the page talks to its own node and nothing else.
- Tracks: the browser's camera and microphone arrive here and are kept behind a
  ``MediaRelay`` (one reader keeps them drained); a call gets unbuffered readers of them
  (:meth:`Bridge.local_tracks`). What the node sends back to the browser are two
  :class:`Feed` tracks that carry the mesh call's remote tracks while there is one.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import ipaddress
import logging
import time
from collections import deque
from typing import Any

import aioice
import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from apps.video.media import black_frame, silence_like
from core import UsageError

__all__ = ["Bridge", "Feed", "LoopbackIce", "is_loopback", "loopback_only"]

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
MAX_SDP = 64 * 1024
VIDEO_TIME_BASE = fractions.Fraction(1, 90_000)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False  # a name (mDNS .local) or garbage


def loopback_only(text: str) -> tuple[str, list[str]]:
    """The browser's SDP with every candidate not on loopback removed (``.local``
    mDNS names included) and connection lines pointed at ``127.0.0.1``; and what was
    dropped. Raises :class:`UsageError` for an SDP that is too large or not one."""
    if len(text) > MAX_SDP or not text.startswith("v=0"):
        raise UsageError("the page sent something that is not an SDP")
    kept: list[str] = []
    dropped: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.startswith("a=candidate:"):
            bits = line.split()
            if len(bits) < 8 or not is_loopback(bits[4]) or "raddr" in bits:
                dropped.append(" ".join(bits[4:6]) if len(bits) > 5 else line)
                continue
        elif line.startswith("c=IN "):
            line = f"c=IN IP4 {LOOPBACK}"
        elif line.startswith("a=rtcp:"):
            line = line.split()[0]  # the port alone
        kept.append(line)
    return "\r\n".join(kept).rstrip("\r\n") + "\r\n", dropped


class LoopbackIce(aioice.Connection):
    """An ``aioice.Connection`` gathering one host candidate per component on
    ``127.0.0.1`` and accepting only loopback remote candidates. Peer-reflexive
    candidates still come up from checks that reach its loopback-bound sockets: the
    kernel delivers those only from this host."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.update(stun_server=None, turn_server=None, use_ipv4=True, use_ipv6=False)
        super().__init__(**kwargs)
        self.dropped: list[str] = []

    async def gather_candidates(self) -> None:
        if self._local_candidates_start:
            return
        self._local_candidates_start = True
        for component in sorted(self._components):
            found = await self.get_component_candidates(component=component, addresses=[LOOPBACK])
            self._local_candidates.extend(found)
        self._local_candidates_end = True

    async def add_remote_candidate(self, remote_candidate: aioice.Candidate | None) -> None:
        if remote_candidate is not None and not is_loopback(remote_candidate.host):
            self.dropped.append(remote_candidate.host)
            return
        await super().add_remote_candidate(remote_candidate)


def _use_loopback_ice(pc: RTCPeerConnection) -> None:
    """Swap each ICE transport's connection for a :class:`LoopbackIce` (the same seam
    as apps.video.ice, checked by its ``check_internals``)."""
    for transceiver in pc.getTransceivers():
        transport = transceiver.receiver.transport.transport
        current = transport.iceGatherer._connection
        if isinstance(current, LoopbackIce):
            continue
        replacement = LoopbackIce(
            ice_controlling=current.ice_controlling,
            components=len(current._components),
            local_username=current.local_username,
            local_password=current.local_password,
        )
        transport.iceGatherer._connection = replacement
        transport._connection = replacement
        transport._recv, transport._send = replacement.recv, replacement.send


FILL_AUDIO = 0.02  # a filler frame of silence every 20 ms
FILL_VIDEO = 1 / 15  # and of black, 15 a second


def _stereo_silence() -> av.AudioFrame:
    frame = av.AudioFrame(format="s16", layout="stereo", samples=960)
    for plane in frame.planes:
        plane.update(bytes(plane.buffer_size))
    frame.sample_rate = 48_000
    frame.time_base = fractions.Fraction(1, 48_000)
    return frame


class Feed(MediaStreamTrack):
    """A track whose frames come from whatever :meth:`feed` gave it last (nothing: it
    waits), re-stamped on one timeline, so the browser's receiver never ends between
    calls. A source that ends leaves the feed waiting for the next."""

    def __init__(self, kind: str, *, filler: bool = False) -> None:
        super().__init__()
        self.kind = kind
        # filler: while it has no source (the page that gave it was closed) it sends
        # black / silence at a steady pace instead of nothing, so the call's media go on
        # until another page takes over.
        self.filler = filler
        self._last: av.AudioFrame | av.VideoFrame | None = None
        self._source: MediaStreamTrack | None = None
        self._changed = asyncio.Event()
        self._shift: int | None = None
        self._next = 0
        self._epoch = time.monotonic()

    @property
    def source(self) -> MediaStreamTrack | None:
        return self._source

    def feed(self, source: MediaStreamTrack | None) -> None:
        old, self._source = self._source, source
        self._shift = None
        if old is not None and old is not source:
            old.stop()
        self._changed.set()

    def stop(self) -> None:
        super().stop()
        self.feed(None)

    async def recv(self) -> av.AudioFrame | av.VideoFrame:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            source = self._source
            if source is None:
                self._changed.clear()
                if not self.filler:
                    await self._changed.wait()
                    continue
                try:
                    async with asyncio.timeout(FILL_AUDIO if self.kind == "audio" else FILL_VIDEO):
                        await self._changed.wait()
                    continue
                except TimeoutError:
                    return self._restamp(self._fill())
            try:
                frame = await source.recv()
            except MediaStreamError:
                if source is self._source:
                    self._source = None
                continue
            if source is self._source and isinstance(frame, av.AudioFrame | av.VideoFrame):
                self._last = frame
                return self._restamp(frame)

    def _fill(self) -> av.AudioFrame | av.VideoFrame:
        last = self._last
        if self.kind == "video":
            width, height = (
                (last.width, last.height) if isinstance(last, av.VideoFrame) else (640, 480)
            )
            return black_frame(width, height)
        if isinstance(last, av.AudioFrame):
            quiet = silence_like(last)
        else:
            quiet = silence_like(_stereo_silence())
        quiet.pts = None
        return quiet

    def _restamp(self, frame: av.AudioFrame | av.VideoFrame) -> av.AudioFrame | av.VideoFrame:
        if isinstance(frame, av.VideoFrame):
            # Stamped when relayed: the browser's jitter buffer then sees frames arrive
            # exactly as their timestamps say and holds them no longer than it must
            # (the mesh leg's own timing made it grow by the second).
            frame.time_base = VIDEO_TIME_BASE
            now = int((time.monotonic() - self._epoch) * VIDEO_TIME_BASE.denominator)
            frame.pts = max(now, self._next)
            self._next = frame.pts + 1
            return frame
        pts = int(frame.pts or 0)
        if self._shift is None:
            self._shift = self._next - pts
        frame.pts = max(pts + self._shift, self._next)
        self._next = frame.pts + frame.samples
        return frame


class Bridge:
    """One page's WebRTC leg to this node. ``answer(offer_sdp)`` connects it; the
    browser's tracks then appear in :attr:`browser` and :meth:`local_tracks` gives a
    call its own readers of them."""

    def __init__(self) -> None:
        self.pc: RTCPeerConnection | None = None
        self.relay = MediaRelay()
        self.browser: dict[str, MediaStreamTrack] = {}
        self.remote = {"audio": Feed("audio"), "video": Feed("video")}
        self.sent_sdp: deque[str] = deque(maxlen=8)  # answers sent to the page
        self.received_sdp: deque[str] = deque(maxlen=8)  # offers as the node used them
        self.dropped: list[str] = []
        self.connected = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    async def answer(self, offer: str) -> str:
        if self.pc is not None:
            raise UsageError("this page's media is connected already")
        text, dropped = loopback_only(offer)
        self.dropped.extend(dropped)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc = pc

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self.browser[track.kind] = track
            keep = self.relay.subscribe(track, buffered=False)
            task = asyncio.ensure_future(self._drain(keep))
            self._tasks.add(task)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState == "connected":
                self.connected.set()

        await pc.setRemoteDescription(RTCSessionDescription(text, "offer"))
        kinds = {t.kind for t in pc.getTransceivers()}
        for kind, feed in self.remote.items():
            if kind in kinds:
                pc.addTrack(feed)  # takes the page's transceiver of that kind
        _use_loopback_ice(pc)
        self.received_sdp.append(text)
        await pc.setLocalDescription(await pc.createAnswer())
        for transceiver in pc.getTransceivers():
            conn = transceiver.receiver.transport.transport._connection
            if isinstance(conn, LoopbackIce):
                self.dropped.extend(conn.dropped)
        answer = str(pc.localDescription.sdp)
        self.sent_sdp.append(answer)
        return answer

    async def _drain(self, keep: MediaStreamTrack) -> None:
        """Reads the browser's track all along: aiortc queues received frames without
        bound until someone reads them."""
        with contextlib.suppress(MediaStreamError):
            while True:
                await keep.recv()

    def local_tracks(self) -> dict[str, MediaStreamTrack]:
        """New unbuffered readers of the browser's live tracks, by kind."""
        return {
            kind: self.relay.subscribe(track, buffered=False)
            for kind, track in self.browser.items()
            if track.readyState == "live"
        }

    def show(self, tracks: dict[str, MediaStreamTrack | None]) -> None:
        """Send these tracks (the mesh call's remote ones) to the page; None: nothing."""
        for kind, feed in self.remote.items():
            if kind in tracks:
                feed.feed(tracks[kind])

    async def close(self) -> None:
        for feed in self.remote.values():
            feed.stop()
        if self.pc is not None:
            pc, self.pc = self.pc, None
            with contextlib.suppress(Exception):
                await pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
