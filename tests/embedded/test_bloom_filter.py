"""Bloom filter hashing and wire form, as bits-and-blooms v3.7.0 and ironwood do them."""

from __future__ import annotations

from core.embedded.bloom import BLOOM_M, Bloom, bloom_locations, murmur3_x64_128


def test_murmur3_known_vectors() -> None:
    # MurmurHash3_x64_128, seed 0 (reference C implementation values)
    assert murmur3_x64_128(b"hello") == (0xCBD8A7B341BD9B02, 0x5B1E906A48AE1D19)
    fox = b"The quick brown fox jumps over the lazy dog"
    assert murmur3_x64_128(fox) == (0xE34BBC7BBC071B6C, 0x7A433CA9C49A9347)
    assert murmur3_x64_128(b"") == (0, 0)


def test_locations_follow_bits_and_blooms_formula() -> None:
    key = bytes(range(32))
    a, b = murmur3_x64_128(key)
    c, d = murmur3_x64_128(key + b"\x01")  # sum256's virtual trailing 1 byte
    h = (a, b, c, d)
    expect = [((h[i % 2] + i * h[2 + ((i + i % 2) % 4) // 2]) % 2**64) % BLOOM_M for i in range(8)]
    assert bloom_locations(key) == expect


def test_empty_filter_wire_form() -> None:
    # all 128 words zero: flags0 all set, flags1 clear, no words follow
    assert bytes(Bloom()) == b"\xff" * 16 + b"\x00" * 16


def test_one_key_filter_wire_form_and_membership() -> None:
    key = bytes(range(32))
    bloom = Bloom.of_keys(key)
    data = bytes(bloom)
    nonzero_words = {loc // 64 for loc in bloom_locations(key)}
    assert len(data) == 32 + 8 * len(nonzero_words)
    assert Bloom.parse(data) == bloom
    assert bloom.test(key)
    assert not bloom.test(bytes(32))


def test_all_ones_words_use_flags1() -> None:
    bloom = Bloom(bits=(1 << BLOOM_M) - 1)
    assert bytes(bloom) == b"\x00" * 16 + b"\xff" * 16
    assert Bloom.parse(bytes(bloom)) == bloom
