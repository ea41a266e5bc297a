from __future__ import annotations

import numpy as np
import pytest

from vreason.clients.synth_video import (DEFAULT_SHAPES, Shape, mp4_bytes, mp4_data_url, render_moving_shapes,
                                         write_moving_shapes_mp4)


def test_render_is_deterministic_and_dark():
    a, b = render_moving_shapes(), render_moving_shapes()
    assert a.shape == (16, 112, 112, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, render_moving_shapes(seed=1))
    assert a[0, 0, 0].max() < 50 and a[0, -1, -1].max() < 50  # dark background corners
    assert render_moving_shapes(num_frames=3, size=(64, 32)).shape == (3, 32, 64, 3)


def test_shapes_move_and_keep_their_colour():
    frames = render_moving_shapes()
    for shape in DEFAULT_SHAPES:
        for t in (0, 15):
            x, y = (int(round(v)) for v in shape.center_at(t))
            assert tuple(frames[t, y, x]) == shape.rgb


def test_shape_metadata():
    assert [s.direction for s in DEFAULT_SHAPES] == ["right", "left"]
    assert Shape("circle", "green", (0, 0), (1, -1)).direction == "up-right"
    assert Shape("circle", "green", (0, 0), (0, 0)).direction == "still"
    assert Shape("square", "red", (10, 10), (2, 3)).center_at(2) == (14, 16)
    with pytest.raises(ValueError):
        Shape("triangle", "red", (0, 0), (0, 0))
    with pytest.raises(ValueError):
        Shape("square", "mauve", (0, 0), (0, 0))


def test_mp4_outputs(tmp_path):
    path = write_moving_shapes_mp4(tmp_path / "a.mp4", num_frames=4, fps=4.0)
    data = path.read_bytes()
    assert data[4:8] == b"ftyp" and data == mp4_bytes(num_frames=4, fps=4.0)
    assert mp4_data_url(num_frames=4, fps=4.0).startswith("data:video/mp4;base64,AAAA")
