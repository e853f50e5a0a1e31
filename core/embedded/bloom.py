"""Ironwood bloom filters (``network/bloomfilter.go``, commit 743fe2f).

The filter is ``bits-and-blooms/bloom/v3`` v3.7.0 with m = 8192 bits, k = 8. A key
is hashed with MurmurHash3 x64-128 (seed 0) of the key and of the key followed by
the byte ``0x01`` (``digest128.sum256``), giving ``h0..h3``; location ``i`` is
``(h[i % 2] + i * h[2 + ((i + i % 2) % 4) // 2]) mod 2**64 mod m``. Bit ``n`` lives in
64-bit word ``n // 64`` at bit ``n % 64`` (``bitset`` v1.13.0).

On the wire (type 5) the 128 words are sent as two 16-byte flag maps (bit
``0x80 >> (i % 8)`` of byte ``i // 8`` set: word ``i`` is all zeroes / all ones)
followed by the remaining words as big-endian uint64s, in order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from .tree import Tree, TreeLink
from .wire import PacketType

__all__ = [
    "BLOOM_K",
    "BLOOM_M",
    "Bloom",
    "BloomExchange",
    "murmur3_x64_128",
]

_FLAG_BYTES = 16
_WORDS = _FLAG_BYTES * 8  # 128 uint64s
BLOOM_M = _WORDS * 64  # 8192 bits
BLOOM_K = 8
_M64 = (1 << 64) - 1
_C1 = 0x87C37B91114253D5
_C2 = 0x4CF5AD432745937F
_ALL_ONES = _M64


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M64


def _fmix(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _M64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _M64
    k ^= k >> 33
    return k


def murmur3_x64_128(data: bytes, seed: int = 0) -> tuple[int, int]:
    """MurmurHash3 x64 128-bit, as two uint64 (h1, h2)."""
    h1 = h2 = seed & _M64
    nblocks = len(data) // 16
    for i in range(nblocks):
        k1 = int.from_bytes(data[16 * i : 16 * i + 8], "little")
        k2 = int.from_bytes(data[16 * i + 8 : 16 * i + 16], "little")
        k1 = (_rotl((k1 * _C1) & _M64, 31) * _C2) & _M64
        h1 ^= k1
        h1 = (_rotl(h1, 27) + h2) & _M64
        h1 = (h1 * 5 + 0x52DCE729) & _M64
        k2 = (_rotl((k2 * _C2) & _M64, 33) * _C1) & _M64
        h2 ^= k2
        h2 = (_rotl(h2, 31) + h1) & _M64
        h2 = (h2 * 5 + 0x38495AB5) & _M64
    tail = data[16 * nblocks :]
    if len(tail) > 8:
        k2 = int.from_bytes(tail[8:], "little")
        h2 ^= (_rotl((k2 * _C2) & _M64, 33) * _C1) & _M64
    if tail:
        k1 = int.from_bytes(tail[:8], "little")
        h1 ^= (_rotl((k1 * _C1) & _M64, 31) * _C2) & _M64
    h1 ^= len(data)
    h2 ^= len(data)
    h1 = (h1 + h2) & _M64
    h2 = (h2 + h1) & _M64
    h1 = _fmix(h1)
    h2 = _fmix(h2)
    h1 = (h1 + h2) & _M64
    h2 = (h2 + h1) & _M64
    return h1, h2


def bloom_locations(key: bytes) -> list[int]:
    """The ``k`` bit positions ``bits-and-blooms`` sets for ``key``."""
    a, b = murmur3_x64_128(key)
    c, d = murmur3_x64_128(key + b"\x01")
    h = (a, b, c, d)
    return [
        ((h[i % 2] + i * h[2 + ((i + i % 2) % 4) // 2]) & _M64) % BLOOM_M for i in range(BLOOM_K)
    ]


@dataclass(frozen=True, slots=True)
class Bloom:
    """An immutable 8192-bit filter; ``bits`` is bit n of the filter at ``1 << n``."""

    bits: int = 0

    @classmethod
    def of_keys(cls, *keys: bytes) -> Bloom:
        bits = 0
        for key in keys:
            for loc in bloom_locations(key):
                bits |= 1 << loc
        return cls(bits)

    def with_key(self, key: bytes) -> Bloom:
        return Bloom(self.bits | Bloom.of_keys(key).bits)

    def merge(self, other: Bloom) -> Bloom:
        return Bloom(self.bits | other.bits)

    def test(self, key: bytes) -> bool:
        return all(self.bits >> loc & 1 for loc in bloom_locations(key))

    def words(self) -> list[int]:
        return [(self.bits >> (64 * i)) & _M64 for i in range(_WORDS)]

    @classmethod
    def from_words(cls, words: list[int]) -> Bloom:
        if len(words) != _WORDS:
            raise ValueError(f"bloom needs {_WORDS} words, got {len(words)}")
        bits = 0
        for i, word in enumerate(words):
            bits |= (word & _M64) << (64 * i)
        return cls(bits)

    def __bytes__(self) -> bytes:
        flags0 = bytearray(_FLAG_BYTES)
        flags1 = bytearray(_FLAG_BYTES)
        keep = bytearray()
        for idx, word in enumerate(self.words()):
            if word == 0:
                flags0[idx // 8] |= 0x80 >> (idx % 8)
            elif word == _ALL_ONES:
                flags1[idx // 8] |= 0x80 >> (idx % 8)
            else:
                keep += word.to_bytes(8, "big")
        return bytes(flags0) + bytes(flags1) + bytes(keep)

    @classmethod
    def parse(cls, data: bytes | memoryview) -> Bloom:
        if len(data) < 2 * _FLAG_BYTES:
            raise ValueError(f"bloom filter too short: {len(data)} bytes")
        flags0 = data[:_FLAG_BYTES]
        flags1 = data[_FLAG_BYTES : 2 * _FLAG_BYTES]
        pos = 2 * _FLAG_BYTES
        words: list[int] = []
        for idx in range(_WORDS):
            mask = 0x80 >> (idx % 8)
            f0 = flags0[idx // 8] & mask
            f1 = flags1[idx // 8] & mask
            if f0 and f1:
                raise ValueError(f"bloom word {idx} flagged both all-zero and all-one")
            if f0:
                words.append(0)
            elif f1:
                words.append(_ALL_ONES)
            elif len(data) - pos >= 8:
                words.append(int.from_bytes(data[pos : pos + 8], "big"))
                pos += 8
            else:
                raise ValueError(f"bloom filter truncated at word {idx}")
        if pos != len(data):
            raise ValueError(f"{len(data) - pos} trailing bytes after bloom filter")
        return cls.from_words(words)


KeyTransform = Callable[[bytes], bytes]


# ---------------------------------------------------------------------------
# router bloom state (the ``blooms`` half of bloomfilter.go)


@dataclass(slots=True)
class _PeerBlooms:
    send: Bloom = field(default_factory=Bloom)
    recv: Bloom = field(default_factory=Bloom)
    seq: int = 0  # forces a resend once an hour of maintenance ticks
    on_tree: bool = False
    z_dirty: bool = False


class BloomExchange:
    """Per-peer bloom filters: what we told each on-tree peer, what it told us.

    The filter sent to a peer holds our transformed key and the filters received
    from every *other* on-tree peer; lookups travel only along tree links whose
    received filter matches the transformed target key.
    """

    def __init__(self, tree: Tree, transform: KeyTransform) -> None:
        self._tree = tree
        self._xform = transform
        self.blooms: dict[bytes, _PeerBlooms] = {}

    def x_key(self, key: bytes) -> bytes:
        out = self._xform(key)
        if len(out) != 32:
            raise ValueError("bloom transform must return 32 bytes")
        return out

    def add_info(self, key: bytes) -> None:
        self.blooms[key] = _PeerBlooms()

    def remove_info(self, key: bytes) -> None:
        self.blooms.pop(key, None)

    def is_on_tree(self, key: bytes) -> bool:
        info = self.blooms.get(key)
        return info.on_tree if info else False

    def handle_bloom(self, key: bytes, bloom: Bloom) -> None:
        info = self.blooms.get(key)
        if info is not None:
            info.recv = bloom

    def send_current(self, link: TreeLink) -> None:
        """``_sendBloom``: whatever we last sent this node (empty for new/off-tree)."""
        info = self.blooms.get(link.key)
        link.send_direct(PacketType.BLOOM_FILTER, bytes(info.send if info else Bloom()))

    def maintenance(self) -> None:
        self._fix_on_tree()
        self._send_all()

    def _fix_on_tree(self) -> None:
        tree = self._tree
        self_parent = tree.parent()
        for pk, pbi in self.blooms.items():
            was_on = pbi.on_tree
            info = tree.infos.get(pk)
            pbi.on_tree = self_parent == pk or (info is not None and info.parent == tree.key)
            if was_on and not pbi.on_tree:
                # dropped from the tree: send a blank filter so no stale ones remain
                pbi.send = Bloom()
                for link in tree.peers.get(pk, {}):
                    link.send_direct(PacketType.BLOOM_FILTER, bytes(pbi.send))

    def _bloom_for(self, key: bytes, keep_ones: bool) -> tuple[Bloom, bool]:
        stored = self.blooms[key]
        pbi = replace(stored)  # Go works on a copy and stores it only when new
        b = Bloom.of_keys(self.x_key(self._tree.key))
        for k, other in self.blooms.items():
            if other.on_tree and k != key:
                b = b.merge(other.recv)
        if keep_ones:
            # keep old 1 bits so ones travel faster than zeroes (prevents flapping)
            merged = b.merge(pbi.send)
            if not pbi.z_dirty and merged != b:
                pbi.z_dirty = True
            b = merged
        else:
            pbi.z_dirty = False
        if b == pbi.send:
            return pbi.send, False
        pbi.send = b
        self.blooms[key] = pbi
        return b, True

    def _send_all(self) -> None:
        for k in list(self.blooms):
            if not self.blooms[k].on_tree:
                continue
            b, is_new = self._bloom_for(k, not self.blooms[k].z_dirty)
            pbi = self.blooms[k]
            pbi.seq += 1
            if is_new or pbi.seq >= 3600:
                for link in self._tree.peers.get(k, {}):
                    link.send_direct(PacketType.BLOOM_FILTER, bytes(b))
                pbi.seq = 0

    def multicast_targets(self, from_key: bytes, to_key: bytes) -> list[TreeLink]:
        """``_sendMulticast``: the best link of each on-tree peer whose filter matches."""
        xform = self.x_key(to_key)
        out: list[TreeLink] = []
        for k, pbi in self.blooms.items():
            if not pbi.on_tree or k == from_key or not pbi.recv.test(xform):
                continue
            best: TreeLink | None = None
            for link in self._tree.peers.get(k, {}):
                if best is None or link.prio < best.prio:
                    best = link
            if best is not None:
                out.append(best)
        return out
