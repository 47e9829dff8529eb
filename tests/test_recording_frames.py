"""The frames between the gateway and its recording worker, with bytes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pairpod.recording.frames import MAX_PAYLOAD, Frame, FrameDecoder, FrameError, Kind, encode


@given(
    st.lists(
        st.tuples(
            st.sampled_from(list(Kind)), st.integers(0, 2**32 - 1), st.floats(0, 1e6), st.binary(max_size=300)
        ),
        max_size=20,
    ),
    st.integers(1, 64),
)
def test_frames_survive_any_split(frames: list[tuple[Kind, int, float, bytes]], step: int) -> None:
    stream = b"".join(encode(*frame) for frame in frames)
    decoder = FrameDecoder()
    decoded: list[Frame] = []
    for start in range(0, len(stream), step):
        decoded += decoder.feed(stream[start : start + step])
    assert [(f.kind, f.recording, f.elapsed, f.payload) for f in decoded] == frames


def test_an_oversized_or_unknown_frame_is_an_error_not_an_allocation() -> None:
    with pytest.raises(FrameError, match="max"):
        FrameDecoder().feed(struct.pack("!BIdI", 2, 1, 0.0, MAX_PAYLOAD + 1))
    with pytest.raises(FrameError, match="unknown frame kind 99"):
        FrameDecoder().feed(struct.pack("!BIdI", 99, 1, 0.0, 0))
