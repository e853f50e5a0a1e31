"""IMAP ``sequence-set`` (RFC 3501 section 9): ``1:3,7,9:*``."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["SequenceSet"]

_RANGE = re.compile(r"^(\d+|\*)(?::(\d+|\*))?$")
MAX_RANGES = 10_000


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """Ranges with ``None`` standing for ``*`` (the largest number in use)."""

    ranges: tuple[tuple[int | None, int | None], ...]

    @classmethod
    def parse(cls, text: str) -> SequenceSet:
        pieces = text.split(",")
        if len(pieces) > MAX_RANGES:
            raise ValueError(f"sequence set has more than {MAX_RANGES} ranges")
        ranges: list[tuple[int | None, int | None]] = []
        for piece in pieces:
            m = _RANGE.match(piece)
            if m is None:
                raise ValueError(f"bad sequence set {text!r}")
            low = None if m.group(1) == "*" else int(m.group(1))
            high = low if m.group(2) is None else None if m.group(2) == "*" else int(m.group(2))
            if low == 0 or high == 0:
                raise ValueError(f"0 is not a valid number in sequence set {text!r}")
            ranges.append((low, high))
        return cls(tuple(ranges))

    def _bounds(self, star: int) -> list[tuple[int, int]]:
        out = []
        for low, high in self.ranges:
            a = star if low is None else low
            b = star if high is None else high
            out.append((min(a, b), max(a, b)))
        return out

    def contains(self, number: int, star: int) -> bool:
        return any(a <= number <= b for a, b in self._bounds(star))

    def select(self, numbers: Iterable[int], star: int) -> list[int]:
        """The members of ``numbers`` (ascending) inside the set."""
        bounds = self._bounds(star)
        if len(bounds) == 1:
            a, b = bounds[0]
            return [n for n in numbers if a <= n <= b]
        return [n for n in numbers if any(a <= n <= b for a, b in bounds)]

    def sequence_numbers(self, count: int) -> list[int]:
        """Message sequence numbers in 1..count, ascending, without duplicates."""
        if count == 0:
            return []
        seen: set[int] = set()
        for a, b in self._bounds(count):
            seen.update(range(max(a, 1), min(b, count) + 1))
        return sorted(seen)
