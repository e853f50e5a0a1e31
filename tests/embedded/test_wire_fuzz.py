"""Hypothesis: every decoder turns garbage into ValueError, never another exception."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.embedded.bloom import Bloom
from core.embedded.meta import MetaReader
from core.embedded.wire import (
    Announce,
    FrameDecoder,
    PathBroken,
    PathLookup,
    PathNotify,
    PathNotifyInfo,
    SigReq,
    SigRes,
    Traffic,
)

DECODERS: list[Callable[[bytes], object]] = [
    SigReq.parse,
    SigRes.parse,
    Announce.parse,
    PathLookup.parse,
    PathNotify.parse,
    PathNotifyInfo.parse,
    PathBroken.parse,
    Traffic.parse,
    Bloom.parse,
]


def _bloomish() -> st.SearchStrategy[bytes]:
    # mostly-valid flag maps so the word decoder is exercised, not only the length check
    return st.builds(
        lambda f0, f1, tail: f0 + f1 + tail,
        st.binary(min_size=16, max_size=16),
        st.binary(min_size=16, max_size=16),
        st.binary(max_size=1100),
    )


@pytest.mark.parametrize("decode", DECODERS, ids=lambda d: d.__qualname__)
@settings(max_examples=300, deadline=None)
@given(data=st.one_of(st.binary(max_size=400), _bloomish()))
def test_decoders_only_raise_value_error(decode: Callable[[bytes], object], data: bytes) -> None:
    try:
        msg = decode(data)
    except ValueError:
        return
    # whatever decodes must re-encode to the same bytes (no silent normalisation)
    # except where Go also accepts non-minimal uvarints
    assert isinstance(bytes(msg), bytes)  # type: ignore[call-overload]


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(st.binary(max_size=64), max_size=20))
def test_frame_decoder_only_raises_value_error(chunks: list[bytes]) -> None:
    dec = FrameDecoder(max_size=1000)
    try:
        for chunk in chunks:
            for frame in dec.feed(chunk):
                assert 1 <= len(frame) <= 1000
    except ValueError:
        pass
    assert dec.buffered <= 1000 + 10 + 64 * 20


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(st.binary(max_size=300), st.binary(max_size=200).map(lambda b: b"meta" + b)))
def test_meta_reader_only_raises_value_error(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        MetaReader(b"pw").feed(data)


@settings(max_examples=100, deadline=None)
@given(words=st.lists(st.sampled_from([0, 2**64 - 1, 1, 2**63, 12345]), min_size=128, max_size=128))
def test_bloom_wire_round_trip(words: list[int]) -> None:
    bloom = Bloom.from_words(words)
    assert Bloom.parse(bytes(bloom)) == bloom
