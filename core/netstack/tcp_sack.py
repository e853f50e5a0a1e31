"""Receive buffers and selective acknowledgments (RFC 2018) for the sans-IO TCP
connection: the in-order byte queue, the out-of-order queue and its SACK blocks, and
the sender's scoreboard with the RFC 6675 notions of holes and ``pipe``.  All sequence
numbers are the connection's relative, unbounded ints.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

__all__ = ["MAX_BLOCKS", "ByteQueue", "Reassembly", "SackScoreboard"]

MAX_BLOCKS = 3  # 3 blocks + NOPs fit in the 40 option bytes beside nothing else


class ByteQueue:
    """In-order received bytes as a queue of the segments' own payload objects: adding
    a segment copies nothing, taking joins once."""

    def __init__(self) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def append(self, data: bytes) -> None:
        if data:
            self._chunks.append(data)
            self._len += len(data)

    def clear(self) -> None:
        self._chunks.clear()
        self._len = 0

    def take(self, max_bytes: int = -1) -> bytes:
        """Remove and return up to ``max_bytes`` (all when negative)."""
        chunks = self._chunks
        if max_bytes < 0 or max_bytes >= self._len:
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self.clear()
            return data
        parts, need = [], max_bytes
        while need:
            head = chunks[0]
            if len(head) <= need:
                parts.append(chunks.popleft())
                need -= len(head)
            else:
                parts.append(head[:need])
                chunks[0] = head[need:]
                need = 0
        self._len -= max_bytes
        return b"".join(parts)


class Reassembly:
    """Out-of-order segments held until the gap before them fills.  The connection
    only stores what lies inside its receive window, so this is bounded by it."""

    def __init__(self) -> None:
        self.segments: dict[int, bytes] = {}
        self.bytes = 0
        self.latest = 0  # the most recently stored segment, for SACK block order

    def __bool__(self) -> bool:
        return bool(self.segments)

    def store(self, seq: int, payload: bytes, space: int) -> bool:
        """Hold ``payload`` at ``seq`` if it is new and fits in ``space`` bytes."""
        if seq in self.segments or self.bytes + len(payload) > space:
            return False
        self.segments[seq] = payload
        self.bytes += len(payload)
        self.latest = seq
        return True

    def drain(self, nxt: int, out: ByteQueue) -> int:
        """Append to ``out`` what now continues the stream at ``nxt``; returns the new
        next expected sequence number."""
        for s in sorted(self.segments):
            if s > nxt:
                break
            data = self.segments.pop(s)
            self.bytes -= len(data)
            end = s + len(data)
            if end > nxt:
                out.append(data[nxt - s :])
                nxt = end
        return nxt

    def sack_blocks(self) -> list[tuple[int, int]]:
        """Merged held ranges, the one holding the most recent segment first (RFC 2018
        section 4), at most :data:`MAX_BLOCKS`."""
        ranges: list[list[int]] = []
        for s in sorted(self.segments):
            e = s + len(self.segments[s])
            if ranges and s <= ranges[-1][1]:
                ranges[-1][1] = max(ranges[-1][1], e)
            else:
                ranges.append([s, e])
        latest = self.latest
        ranges.sort(key=lambda r: (not r[0] <= latest < r[1], -r[0]))
        return [(s, e) for s, e in ranges[:MAX_BLOCKS]]


class SackScoreboard:
    """What the peer told us it holds above the cumulative ACK: sorted, merged,
    non-overlapping ``(start, end)`` ranges."""

    def __init__(self) -> None:
        self.ranges: list[tuple[int, int]] = []
        self.sacked_bytes = 0

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def update(self, blocks: Iterable[tuple[int, int]], una: int, snd_max: int) -> bool:
        """Merge blocks; returns True if they told us something new.  Blocks outside
        ``(una, snd_max]`` (D-SACK, stale or bogus) are ignored."""
        grew = False
        for left, right in blocks:
            if not una < left < right <= snd_max:
                continue
            merged: list[tuple[int, int]] = []
            for s, e in self.ranges:
                if e < left or s > right:
                    merged.append((s, e))
                else:
                    left, right = min(s, left), max(e, right)
            merged.append((left, right))
            merged.sort()
            total = sum(e - s for s, e in merged)
            grew = grew or total != self.sacked_bytes
            self.ranges, self.sacked_bytes = merged, total
        return grew

    def prune(self, una: int) -> None:
        """Forget what the cumulative ACK now covers."""
        kept = [(max(s, una), e) for s, e in self.ranges if e > una]
        self.ranges = kept
        self.sacked_bytes = sum(e - s for s, e in kept)

    def clear(self) -> None:
        self.ranges = []
        self.sacked_bytes = 0

    def holes(self, start: int) -> list[tuple[int, int]]:
        """Un-SACKed ranges from ``start`` up to the highest SACKed byte."""
        holes, pos = [], start
        for s, e in self.ranges:
            if s > pos:
                holes.append((pos, s))
            pos = max(pos, e)
        return holes

    def pipe(self, una: int, snd_max: int, rtx_next: int) -> int:
        """RFC 6675 'pipe': bytes still in the network.  SACKed bytes have left it and
        holes at or above ``rtx_next`` (not yet retransmitted) are deemed lost."""
        lost = sum(e - s for s, e in self.holes(max(rtx_next, una)))
        return (snd_max - una) - self.sacked_bytes - lost
