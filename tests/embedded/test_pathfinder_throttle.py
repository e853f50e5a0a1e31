"""The pathfinder's lookup throttle: per destination, and a lookup that reached no
link (sent before the link came up, e.g. right after a peer restart) does not hold
back the first one once a link is up."""

from __future__ import annotations

from typing import Any

from core.embedded.pathfinder import Pathfinder

ME = bytes([1]) * 32
A, B = bytes([0xA0]) * 32, bytes([0xB0]) * 32


class _Link:
    key = bytes([9]) * 32

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send_queued(self, _kind: Any, _body: bytes, _source: bytes, dest: bytes) -> None:
        self.sent.append(dest)


class _Tree:
    key = ME

    def sign(self, _data: bytes) -> bytes:
        return bytes(64)

    def root_and_path(self, _key: bytes) -> tuple[bytes, tuple[int, ...]]:
        return ME, ()


class _Blooms:
    def __init__(self) -> None:
        self.links: list[_Link] = []

    def multicast_targets(self, _from: bytes, _dest: bytes) -> list[_Link]:
        return list(self.links)

    def x_key(self, key: bytes) -> bytes:
        return key

    def is_on_tree(self, _key: bytes) -> bool:
        return True


def _pathfinder(blooms: _Blooms) -> Pathfinder:
    return Pathfinder(
        _Tree(),  # type: ignore[arg-type]
        blooms,  # type: ignore[arg-type]
        next_hop=lambda _path, mark: (None, mark),
        forward=lambda _tr: None,
        path_timeout=60.0,
        path_throttle=1.0,
        wallclock=lambda: 1000.0,
        path_notify=lambda _key: None,
    )


def test_a_lookup_into_no_link_does_not_delay_the_first_after_the_link_is_up() -> None:
    blooms = _Blooms()
    pf = _pathfinder(blooms)
    pf.rumor_send_lookup(A, 10.0)  # no link yet: goes nowhere
    link = _Link()
    blooms.links.append(link)
    pf.rumor_send_lookup(A, 10.1)  # the link just came up: sent now, not at 11.0
    assert link.sent == [A]


def test_the_throttle_is_per_destination() -> None:
    link = _Link()
    blooms = _Blooms()
    blooms.links.append(link)
    pf = _pathfinder(blooms)
    pf.rumor_send_lookup(A, 10.0)
    pf.rumor_send_lookup(B, 10.1)  # another destination is not held back by A's
    pf.rumor_send_lookup(A, 10.5)  # A again within the throttle: held back
    assert link.sent == [A, B]
    pf.rumor_send_lookup(A, 11.0)
    assert link.sent == [A, B, A]
