from __future__ import annotations

import math
from fractions import Fraction

import pytest

from vreason.server.video import (DEFAULT_FPS, SamplingSpec, VideoError, VideoLimits,
                                  frame_indices_by_count, frame_indices_by_fps)


@pytest.mark.parametrize("args, expected", [
    ((16, 8.0, 2.0, 32, 2), [0, 4, 8, 12]),              # t = 0, .5, 1, 1.5 s
    ((10, 8.0, 2.0, 32, 2), [0, 4]),                     # [0, 4, 8] -> drop the last sample
    ((10, 8.0, 2.0, 32, 1), [0, 4, 8]),
    ((31, 30.0, 4.0, 32, 2), [0, 8, 15, 23]),            # 7.5 -> 8, 22.5 -> 23: half up
    ((100, 29.97, 1.0, 32, 2), [0, 30, 60, 90]),         # NTSC rate, 29.97 -> 30
    ((5, 6.0, 5.0, 32, 1), [0, 1, 2, 4]),                # 4.8 clamps to 4 and is deduplicated
    ((3, 8.0, 6.0, 32, 2), [0, 1]),                      # [0, 1, 2] rounded down to 2
    ((5, 8.0, 16.0, 32, 1), [0, 1, 2, 3, 4]),            # fps above native: every frame once
    ((5, 8.0, 16.0, 32, 2), [0, 1, 2, 3]),
    ((100, 10.0, 10.0, 8, 2), [0, 14, 28, 42, 57, 71, 85, 99]),  # cap: 8 spread over 100
    ((100, 10.0, 10.0, 9, 2), [0, 14, 28, 42, 57, 71, 85, 99]),  # cap 9 -> 8 (multiple of 2)
    ((1, 8.0, 2.0, 32, 2), [0, 0]),                      # one frame, padded
    ((3, 25.0, 2.0, 32, 4), [0, 0, 0, 0]),               # only t=0 fits, padded to 4
    # 1334 candidates (every 15th frame), 32 spread: positions 43*i since 1333/31 = 43
    ((20000, 30.0, 2.0, 32, 2), [645 * i for i in range(32)]),
])
def test_indices_by_fps(args, expected):
    assert frame_indices_by_fps(*args) == expected


def _naive_by_fps(total, native, fps):
    # The documented definition, enumerated literally (no shortcut for fps >= native).
    duration = Fraction(total) / Fraction(native)
    hits, k = set(), 0
    while Fraction(k) / Fraction(fps) < duration:
        x = Fraction(k) / Fraction(fps) * Fraction(native)
        hits.add(min(math.floor(x + Fraction(1, 2)), total - 1))
        k += 1
    return sorted(hits)


@pytest.mark.parametrize("total", [1, 2, 7, 30, 61])
@pytest.mark.parametrize("native, fps", [(8.0, 8.0), (8.0, 16.0), (25.0, 29.97), (29.97, 30.0),
                                         (30.0, 2.0), (24.0, 7.0), (12.5, 3.3)])
def test_by_fps_matches_literal_definition(total, native, fps):
    assert frame_indices_by_fps(total, native, fps, 10_000, 1) == _naive_by_fps(total, native, fps)


@pytest.mark.parametrize("args, expected", [
    ((16, 8, 2), [0, 2, 4, 6, 9, 11, 13, 15]),
    ((10, 4, 2), [0, 3, 6, 9]),
    ((10, 5, 2), [0, 3, 6, 9]),          # 5 rounded down to 4
    ((6, 3, 1), [0, 3, 5]),              # 2.5 -> 3 (np.round would give 2)
    ((3, 8, 2), [0, 2]),                 # only 3 frames: 3 -> 2
    ((10, 1, 2), [0, 9]),                # raised to one temporal patch
    ((1, 4, 2), [0, 0]),                 # padded with the last frame
    ((3, 4, 4), [0, 1, 2, 2]),
    ((5, 1, 1), [0]),
])
def test_indices_by_count(args, expected):
    assert frame_indices_by_count(*args) == expected


@pytest.mark.parametrize("call", [
    lambda: frame_indices_by_fps(0, 8.0, 2.0, 32, 2),
    lambda: frame_indices_by_fps(10, 0.0, 2.0, 32, 2),
    lambda: frame_indices_by_fps(10, 8.0, 2.0, 1, 2),
    lambda: frame_indices_by_count(0, 4, 2),
    lambda: frame_indices_by_count(10, 0, 2),
])
def test_sampling_rejects_impossible_arguments(call):
    with pytest.raises(ValueError):
        call()


def test_sampling_spec_defaults_and_precedence():
    assert SamplingSpec().fps == DEFAULT_FPS and not SamplingSpec().by_count
    spec = SamplingSpec(fps=1, num_frames=8)
    assert spec.by_count and spec.num_frames == 8 and isinstance(spec.fps, float)
    assert SamplingSpec(num_frames=4).fps is None


@pytest.mark.parametrize("kwargs, param", [
    ({"fps": 0}, "mm_processor_kwargs.fps"), ({"fps": -1.0}, "mm_processor_kwargs.fps"),
    ({"fps": float("nan")}, "mm_processor_kwargs.fps"), ({"fps": float("inf")}, "mm_processor_kwargs.fps"),
    ({"fps": True}, "mm_processor_kwargs.fps"), ({"fps": "2"}, "mm_processor_kwargs.fps"),
    ({"num_frames": 0}, "mm_processor_kwargs.num_frames"),
    ({"num_frames": 2.5}, "mm_processor_kwargs.num_frames"),
    ({"num_frames": True}, "mm_processor_kwargs.num_frames"),
])
def test_sampling_spec_validation(kwargs, param):
    with pytest.raises(VideoError) as err:
        SamplingSpec(**kwargs)
    assert err.value.param == param and err.value.status == 400
    assert err.value.code == "invalid_video_sampling"


def test_num_frames_over_server_cap():
    SamplingSpec(num_frames=32).check(VideoLimits(max_frames=32))
    with pytest.raises(VideoError, match="limit of 32") as err:
        SamplingSpec(num_frames=33).check(VideoLimits(max_frames=32))
    assert err.value.param == "mm_processor_kwargs.num_frames"


@pytest.mark.parametrize("kwargs", [{"max_bytes": 0}, {"max_pixels": 100}, {"max_frames": 1},
                                    {"frame_multiple": 0}, {"max_frames": True}])
def test_video_limits_validation(kwargs):
    with pytest.raises(ValueError):
        VideoLimits(**kwargs)
