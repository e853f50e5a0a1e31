"""Test wiring: two NetStacks joined packet to packet through impairments
(loss, reordering, duplication) that can be set per direction."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass

from core.netstack.stack import NetStack

A_ADDR = "fd00:1::a"
B_ADDR = "fd00:1::b"


@dataclass
class Impairment:
    loss: float = 0.0
    reorder: float = 0.0
    duplicate: float = 0.0
    max_delay: float = 0.004
    seed: int = 1

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.sent = self.dropped = self.reordered = self.duplicated = 0

    def wrap(
        self, loop: asyncio.AbstractEventLoop, deliver: Callable[[bytes], None]
    ) -> Callable[[bytes], None]:
        """A send_packet that delivers to ``deliver`` on a later loop iteration."""

        def send(pkt: bytes) -> None:
            self.sent += 1
            rng = self.rng
            if rng.random() < self.loss:
                self.dropped += 1
                return
            copies = 1
            if rng.random() < self.duplicate:
                self.duplicated += 1
                copies = 2
            for _ in range(copies):
                if rng.random() < self.reorder:
                    self.reordered += 1
                    loop.call_later(rng.uniform(0.0005, self.max_delay), deliver, pkt)
                else:
                    loop.call_soon(deliver, pkt)

        return send


def stack_pair(
    ab: Impairment | None = None, ba: Impairment | None = None, **kwargs: object
) -> tuple[NetStack, NetStack]:
    """Stacks A (fd00:1::a) and B (fd00:1::b) on the running loop, wired together."""
    loop = asyncio.get_running_loop()
    ab = ab or Impairment()
    ba = ba or Impairment()
    holder: dict[str, NetStack] = {}
    a = NetStack([A_ADDR], ab.wrap(loop, lambda p: holder["b"].receive_packet(p)), **kwargs)  # type: ignore[arg-type]
    b = NetStack([B_ADDR], ba.wrap(loop, lambda p: holder["a"].receive_packet(p)), **kwargs)  # type: ignore[arg-type]
    holder["a"], holder["b"] = a, b
    return a, b
