from __future__ import annotations

import base64

import numpy as np
import pytest

from vreason.clients.synth_video import render_moving_shapes, write_moving_shapes_mp4, write_video


def data_url(payload: bytes, subtype: str = "mp4") -> str:
    return f"data:video/{subtype};base64," + base64.b64encode(payload).decode("ascii")


@pytest.fixture(scope="session")
def clip_path(tmp_path_factory):
    """Default synthetic clip: 16 frames, 112x112, 8 fps, red square right, blue circle left."""
    return write_moving_shapes_mp4(tmp_path_factory.mktemp("clips") / "shapes.mp4")


@pytest.fixture(scope="session")
def clip_bytes(clip_path) -> bytes:
    return clip_path.read_bytes()


@pytest.fixture(scope="session")
def clip_frames() -> np.ndarray:
    return render_moving_shapes()


@pytest.fixture(scope="session")
def noise_mkv_bytes(tmp_path_factory) -> bytes:
    """32 frames of noise in Matroska: big frames, so a cut keeps the header but loses frames."""
    frames = np.random.default_rng(0).integers(0, 255, (32, 64, 64, 3), dtype=np.uint8)
    return write_video(tmp_path_factory.mktemp("clips") / "noise.mkv", frames, 8.0).read_bytes()


@pytest.fixture(scope="session")
def make_data_url():
    return data_url
