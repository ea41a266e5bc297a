"""Frame-list videos: image data URLs / file paths and vLLM's data:video/jpeg frame lists."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest

from vreason.server.video import VideoError, VideoLimits
from vreason.server.video.frames import decode_frames, is_frame_list_url, split_frame_list


def _png(color, size=(60, 80)) -> str:
    img = np.zeros((*size, 3), np.uint8)
    img[:] = color[::-1]  # BGR for OpenCV
    return "data:image/png;base64," + base64.b64encode(cv2.imencode(".png", img)[1].tobytes()).decode()


def test_frames_decode_resize_rgb_and_pad():
    v = decode_frames([_png((255, 0, 0)), _png((0, 0, 255)), _png((0, 255, 0))], fps=2.0, limits=VideoLimits())
    assert v.frames.shape[0] == 4 and v.frames.dtype == np.uint8  # padded to the frame multiple
    h, w = v.frames.shape[1:3]
    assert h % 28 == 0 and w % 28 == 0 and h * w <= VideoLimits().max_pixels
    assert tuple(v.frames[0, 5, 5]) == (255, 0, 0) and tuple(v.frames[3, 5, 5]) == (0, 255, 0)
    assert v.metadata["fps"] == 2.0 and v.metadata["frames_indices"] == [0, 1, 2, 3]


def test_mixed_sizes_share_the_first_frame_size():
    v = decode_frames([_png((1, 2, 3)), _png((1, 2, 3), size=(200, 100))], fps=1.0, limits=VideoLimits())
    assert v.frames.shape[0] == 2


def test_file_frames_and_errors(tmp_path):
    img = np.full((56, 56, 3), 128, np.uint8)
    cv2.imwrite(str(tmp_path / "f.jpg"), img)
    v = decode_frames([f"file://{tmp_path / 'f.jpg'}"] * 2, fps=1.0, limits=VideoLimits(),
                      allowed_local_media_path=str(tmp_path))
    assert v.frames.shape[0] == 2
    with pytest.raises(VideoError) as e:
        decode_frames([f"file://{tmp_path / 'f.jpg'}"], fps=1.0, limits=VideoLimits())
    assert e.value.code == "media_path_not_allowed"
    with pytest.raises(VideoError) as e:
        decode_frames(["data:image/png;base64,QUJD"], fps=1.0, limits=VideoLimits())
    assert e.value.code == "video_decode_failed"
    with pytest.raises(VideoError) as e:
        decode_frames([_png((0, 0, 0))] * 40, fps=1.0, limits=VideoLimits())
    assert e.value.code == "video_too_long"
    with pytest.raises(VideoError) as e:
        decode_frames(["https://example.com/a.jpg"], fps=1.0, limits=VideoLimits())
    assert e.value.code == "unsupported_media_url"


def test_vllm_frame_list_url():
    url = "data:video/jpeg;base64,AAAA,BBBB"
    assert is_frame_list_url(url) and not is_frame_list_url("data:video/mp4;base64,AAAA")
    assert split_frame_list(url) == ["data:image/jpeg;base64,AAAA", "data:image/jpeg;base64,BBBB"]


def test_image_data_urls_share_the_video_data_url_rules():
    # one decoder for every data URL: the same byte cap (413), empty and bad-base64 refusals
    limits = VideoLimits(max_bytes=100)
    for payload, code, status in [(base64.b64encode(b"x" * 101).decode(), "video_too_large", 413),
                                  ("!" * 10_000, "video_too_large", 413), ("", "video_empty", 400),
                                  ("QUI", "invalid_data_url", 400)]:
        with pytest.raises(VideoError) as e:
            decode_frames(["data:image/png;base64," + payload], fps=1.0, limits=limits)
        assert (e.value.code, e.value.status, e.value.param) == (code, status, "messages"), payload
        assert "image frame data URL" in e.value.message
