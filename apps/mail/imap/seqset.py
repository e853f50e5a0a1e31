"""IMAP ``sequence-set`` (RFC 3501 section 9): ``1:3,7,9:*``."""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["SequenceSet", "absent_ranges", "clip_ranges", "ranges_text"]

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


def absent_ranges(present: list[int], high: int) -> list[tuple[int, int]]:
    """The ranges of ``1..high`` not in ``present`` (ascending)."""
    out: list[tuple[int, int]] = []
    start = 1
    for number in present:
        if number > high:
            break
        if number > start:
            out.append((start, number - 1))
        start = max(start, number + 1)
    if start <= high:
        out.append((start, high))
    return out


def clip_ranges(
    ranges: list[tuple[int, int]], within: SequenceSet, star: int
) -> list[tuple[int, int]]:
    """``ranges`` (ascending, disjoint) intersected with a sequence set, merged, ascending."""
    ends = [b for _, b in ranges]
    pieces: list[tuple[int, int]] = []
    for low, high in within._bounds(star):
        i = bisect.bisect_left(ends, low)
        while i < len(ranges) and ranges[i][0] <= high:
            a, b = ranges[i]
            pieces.append((max(a, low), min(b, high)))
            i += 1
    pieces.sort()
    merged: list[tuple[int, int]] = []
    for a, b in pieces:
        if merged and a <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def ranges_text(ranges: list[tuple[int, int]]) -> str:
    return ",".join(str(a) if a == b else f"{a}:{b}" for a, b in ranges)
