"""Call services on embedded nodes for the tests, and what they observe."""

from __future__ import annotations

import array
import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
from aiortc import MediaStreamTrack

from apps.video import sdp
from apps.video.call import CallOptions
from apps.video.media import Tone
from apps.video.service import CallService, VideoConfig
from core import Node, NodeEvent

__all__ = ["Phone", "StereoTone", "connect", "method", "phones", "trust_each_other", "trusted_pair"]


@dataclass
class Phone:
    """A node with the call service on it, recording its events and every SDP sent."""

    node: Node
    service: CallService
    events: list[NodeEvent] = field(default_factory=list)
    _watch: asyncio.Task[None] | None = None

    async def watch(self) -> None:
        ready = asyncio.Event()

        async def run() -> None:
            async with self.node.events.subscribe() as sub:
                ready.set()
                async for event in sub:
                    if event.kind.startswith(("call.", "attention")):
                        self.events.append(event)

        self._watch = asyncio.ensure_future(run())
        await ready.wait()

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]

    def ended(self) -> list[dict[str, Any]]:
        return [e.data for e in self.events if e.kind == "call.ended"]

    async def wait_event(self, kind: str, timeout: float = 30.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events:
                    if event.kind == kind:
                        return event.data
                await asyncio.sleep(0.02)

    async def wait_state(self, state: str, timeout: float = 30.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events:
                    if event.kind == "call.state" and event.data["state"] == state:
                        return event.data
                await asyncio.sleep(0.02)

    def sent_sdps(self) -> list[str]:
        return [s for s in (self.service.sent_sdp) if s]

    async def close(self) -> None:
        await self.service.close()
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch


@contextlib.asynccontextmanager
async def phones(nodes: list[Node], root: Path, **config: Any) -> AsyncIterator[list[Phone]]:
    """A call service on each node (signaling on a free port each is impossible: the
    port is the protocol's, 5311, and each node has its own address)."""
    made: list[Phone] = []
    try:
        for i, node in enumerate(nodes):
            service = CallService(node, VideoConfig.from_mapping(config), root / f"phone{i}")
            await service.start()
            phone = Phone(node, service)
            await phone.watch()
            made.append(phone)
        yield made
    finally:
        for phone in made:
            await phone.close()
            for text in phone.service.sent_sdp:
                assert set(sdp.addresses(text)) == {str(phone.node.address)}, text


async def trust_each_other(a: Phone, b: Phone, names: tuple[str, str] = ("a", "b")) -> None:
    """Each adds the other to its contacts (trusted) under the other's name."""
    await a.node.contacts.add(b.node.key, alias=names[1])
    await b.node.contacts.add(a.node.key, alias=names[0])


async def method(phone: Phone, name: str, **params: Any) -> Any:
    """A control method of the phone's call service, as the control API calls it."""
    return await phone.service.control_methods()[name](params)


async def connect(caller: Phone, callee: Phone, **options: Any) -> str:
    """Call, answer, and wait until both sides are active; the call id."""
    call = await caller.service.place(callee.node.key.hex(), CallOptions(**options))
    await callee.wait_event("call.incoming")
    await method(callee, "call.answer")
    await caller.wait_state("active")
    await callee.wait_state("active")
    return call.id


@contextlib.asynccontextmanager
async def trusted_pair(root: Path, **config: Any) -> AsyncIterator[tuple[Phone, Phone]]:
    """Two phones on a fresh mesh (through its relay) that trust each other."""
    from tests.video.mesh import CallMesh

    async with CallMesh(root) as mesh:
        nodes = await mesh.open(2)
        async with phones(nodes, root, **config) as (a, b):
            await trust_each_other(a, b)
            yield a, b


class StereoTone(MediaStreamTrack):
    """The tone in stereo, as a browser's microphone reaches the node (aiortc decodes
    Opus to s16 stereo) and as MediaPlayer gives a file's sound."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._mono = Tone()

    async def recv(self) -> av.AudioFrame:
        mono = await self._mono.recv()
        left = array.array("h", bytes(mono.planes[0])[: 2 * mono.samples])
        both = array.array("h", [0]) * (2 * len(left))
        both[0::2] = left
        both[1::2] = left
        frame = av.AudioFrame(format="s16", layout="stereo", samples=mono.samples)
        frame.planes[0].update(both.tobytes())
        frame.sample_rate, frame.pts, frame.time_base = mono.sample_rate, mono.pts, mono.time_base
        return frame

    def stop(self) -> None:
        self._mono.stop()
        super().stop()
