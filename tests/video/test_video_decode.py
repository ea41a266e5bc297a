from __future__ import annotations

import threading

import numpy as np
import pytest

from vreason.clients.synth_video import (DEFAULT_SHAPES, render_moving_shapes, write_moving_shapes_mp4,
                                         write_video)
from vreason.server.video import (DecodedVideo, SamplingSpec, VideoError, VideoLimits, VideoSource,
                                  decode_video, resized_shape)

LIMITS = VideoLimits()


def _decode(data: bytes, spec=None, limits=LIMITS, suffix=".mp4") -> DecodedVideo:
    return decode_video(VideoSource(data=data, suffix=suffix), spec or SamplingSpec(), limits)


def _decode_error(data: bytes, spec=None, limits=LIMITS) -> VideoError:
    with pytest.raises(VideoError) as err:
        _decode(data, spec, limits)
    return err.value


def test_default_sampling_of_synthetic_clip(clip_bytes, clip_frames):
    video = _decode(clip_bytes)
    assert video.frames.shape == (4, 112, 112, 3) and video.frames.dtype == np.uint8
    assert video.frames.flags.c_contiguous
    assert video.metadata == {"fps": 8.0, "duration": 2.0, "total_num_frames": 16,
                              "frames_indices": [0, 4, 8, 12], "video_backend": "opencv",
                              "do_sample_frames": False}
    assert (video.source_width, video.source_height, video.truncated) == (112, 112, False)
    # Lossy codec: close to what was rendered, frame for frame.
    diff = np.abs(video.frames.astype(int) - clip_frames[[0, 4, 8, 12]].astype(int))
    assert diff.mean() < 6


def test_frames_are_rgb(clip_bytes):
    video = _decode(clip_bytes, SamplingSpec(num_frames=16))
    square, circle = DEFAULT_SHAPES
    assert (square.color_name, circle.color_name) == ("red", "blue")
    for t in (0, 7, 15):
        x, y = (int(v) for v in square.center_at(t))
        r, g, b = video.frames[t, y - 4:y + 4, x - 4:x + 4].reshape(-1, 3).mean(axis=0)
        assert r > 180 and g < 70 and b < 70, (t, r, g, b)
        x, y = (int(v) for v in circle.center_at(t))
        r, g, b = video.frames[t, y - 4:y + 4, x - 4:x + 4].reshape(-1, 3).mean(axis=0)
        assert b > 180 and r < 70 and g < 90, (t, r, g, b)


def test_num_frames_and_file_source(clip_path):
    video = decode_video(VideoSource(path=str(clip_path)), SamplingSpec(num_frames=8), LIMITS)
    assert video.metadata["frames_indices"] == [0, 2, 4, 6, 9, 11, 13, 15]
    assert video.frames.shape == (8, 112, 112, 3)


def test_max_frames_caps_fps_sampling(tmp_path):
    data = write_moving_shapes_mp4(tmp_path / "long.mp4", num_frames=40, size=(64, 48)).read_bytes()
    video = _decode(data, SamplingSpec(fps=8.0), VideoLimits(max_frames=6))
    assert video.metadata["frames_indices"] == [0, 8, 16, 23, 31, 39]
    assert video.metadata["duration"] == 5.0


def test_max_pixels_resize(tmp_path, clip_bytes):
    assert _decode(clip_bytes, limits=VideoLimits(max_pixels=56 * 56)).frames.shape == (4, 56, 56, 3)
    data = write_moving_shapes_mp4(tmp_path / "wide.mp4", size=(160, 96)).read_bytes()
    video = _decode(data)
    assert video.frames.shape == (4, 84, 140, 3)
    assert (video.source_width, video.source_height) == (160, 96)


@pytest.mark.parametrize("h, w, max_pixels, expected", [
    (112, 112, 112 * 112, (112, 112)),
    (50, 50, 112 * 112, (56, 56)),          # nearest multiple of 28, upwards here
    (10, 10, 112 * 112, (28, 28)),          # never below 28
    (96, 160, 112 * 112, (84, 140)),
    (1080, 1920, 448 * 448, (336, 588)),
    (20, 4000, 112 * 112, (28, 448)),       # extreme aspect: short side clamped to 28
    (4000, 20, 112 * 112, (448, 28)),
])
def test_resized_shape(h, w, max_pixels, expected):
    assert resized_shape(h, w, max_pixels) == expected


def test_resized_shape_invariants():
    rng = np.random.default_rng(1)
    for h, w, m in zip(rng.integers(1, 5000, 300), rng.integers(1, 5000, 300), rng.integers(784, 10**6, 300)):
        rh, rw = resized_shape(int(h), int(w), int(m))
        assert rh % 28 == 0 and rw % 28 == 0 and rh >= 28 and rw >= 28 and rh * rw <= m


def test_too_many_source_frames(clip_bytes):
    err = _decode_error(clip_bytes, limits=VideoLimits(max_source_frames=15))
    assert (err.code, err.status) == ("video_too_long", 400)
    assert _decode(clip_bytes, limits=VideoLimits(max_source_frames=16)).metadata["total_num_frames"] == 16


def test_resolution_too_large(clip_bytes):
    err = _decode_error(clip_bytes, limits=VideoLimits(max_source_pixels=112 * 111))
    assert (err.code, err.status) == ("video_resolution_too_large", 400)


def test_num_frames_above_cap(clip_bytes):
    err = _decode_error(clip_bytes, SamplingSpec(num_frames=64))
    assert err.code == "invalid_video_sampling" and err.param == "mm_processor_kwargs.num_frames"


def test_truncated_mp4_fails_cleanly(clip_bytes):
    err = _decode_error(clip_bytes[: len(clip_bytes) // 2])
    assert err.code == "video_decode_failed"


@pytest.mark.parametrize("payload", [
    b"\x00" * 1000, b"garbage" * 500, b"\x00\x00\x00\x18ftypisom" + b"\xff" * 500,
    b"#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n",        # playlists never reach FFmpeg
    b"ffconcat version 1.0\nfile /etc/passwd\n", b"x",
])
def test_garbage_fails_cleanly(payload):
    assert _decode_error(payload).code == "video_decode_failed"


def test_truncated_stream_is_resampled(noise_mkv_bytes):
    data = noise_mkv_bytes[: len(noise_mkv_bytes) * 3 // 4]
    video = _decode(data, SamplingSpec(num_frames=8))
    readable = video.metadata["total_num_frames"]
    assert video.truncated and 2 <= readable < 32
    assert len(video.metadata["frames_indices"]) == len(video.frames) == min(8, readable - readable % 2)
    assert video.metadata["frames_indices"][-1] == readable - 1
    video = _decode(data)  # by fps: the whole readable part, every 4th frame at 8 -> 2 fps
    assert video.metadata["frames_indices"][:2] == [0, 4] and len(video.frames) % 2 == 0


def test_stream_with_too_few_readable_frames(noise_mkv_bytes):
    err = _decode_error(noise_mkv_bytes[: len(noise_mkv_bytes) // 20])
    assert err.code == "video_decode_failed" and "truncated or corrupt" in err.message


def test_corruption_only_ever_raises_video_error(clip_bytes, noise_mkv_bytes):
    rng = np.random.default_rng(0)
    variants = [data[:cut] for data in (clip_bytes, noise_mkv_bytes)
                for cut in (8, 64, len(data) // 3, len(data) - 1)]
    for data in (clip_bytes, noise_mkv_bytes):
        for _ in range(6):
            corrupt = bytearray(data)
            pos = rng.integers(32, len(data), 20)
            chunk = slice(pos[0], min(pos[0] + 64, len(corrupt)))
            corrupt[chunk] = rng.integers(0, 256, chunk.stop - chunk.start, dtype=np.uint8).tobytes()
            for p in pos[1:]:
                corrupt[p] ^= 0xFF
            variants.append(bytes(corrupt))
    for data in variants:
        try:
            video = _decode(data, SamplingSpec(num_frames=4))
        except VideoError:
            continue
        assert video.frames.ndim == 4 and len(video.frames) == len(video.metadata["frames_indices"])


def test_other_containers(tmp_path):
    frames = render_moving_shapes(num_frames=12, size=(64, 64))
    for name, fourcc in (("clip.avi", "MJPG"), ("clip.mkv", "mp4v")):
        data = write_video(tmp_path / name, frames, 6.0, fourcc).read_bytes()
        video = _decode(data, SamplingSpec(fps=3.0), suffix=name[-4:])
        assert video.metadata["frames_indices"] == [0, 2, 4, 6, 8, 10]
        assert video.frames.shape == (6, 56, 56, 3)


def test_cancel_event_stops_decode(clip_bytes):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(VideoError) as err:
        decode_video(VideoSource(data=clip_bytes), SamplingSpec(), LIMITS, cancel=cancel)
    assert err.value.code == "video_decode_cancelled"


def test_temporary_file_is_removed(clip_bytes, tmp_path, monkeypatch):
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    _decode(clip_bytes)
    _decode_error(b"garbage" * 100)
    _decode_error(clip_bytes, limits=VideoLimits(max_source_frames=3))
    assert list(tmp_path.iterdir()) == []


def test_opencv_errors_become_video_errors(clip_bytes, monkeypatch):
    import cv2

    def broken(*args, **kwargs):
        raise cv2.error("simulated")
    monkeypatch.setattr(cv2, "cvtColor", broken)
    assert _decode_error(clip_bytes).code == "video_decode_failed"


def test_local_file_removed_after_resolve(tmp_path, clip_bytes):
    path = tmp_path / "gone.mp4"
    path.write_bytes(clip_bytes)
    source = VideoSource(path=str(path))
    path.unlink()
    with pytest.raises(VideoError) as err:
        decode_video(source, SamplingSpec(), LIMITS)
    assert err.value.code == "media_not_found"


def test_package_imports_no_heavy_frameworks():
    import subprocess
    import sys
    code = ("import sys, vreason.server.video, vreason.clients.synth_video; "
            "print(sorted(m for m in ('torch', 'vllm', 'fastapi', 'pydantic') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
