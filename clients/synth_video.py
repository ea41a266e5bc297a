"""Synthetic test videos: coloured shapes moving on a dark background (numpy + OpenCV only).

The scene is fully described by ``Shape`` values, so a demo dataset can derive ground-truth
answers (direction of motion, colour order, shape count) from the same objects it renders.
Coordinates are pixels with x to the right and y *down*; velocities are pixels per frame.
"""

from __future__ import annotations

import base64
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# RGB. Saturated primaries survive 4:2:0 chroma subsampling well enough to be told apart.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 20, 20), "green": (20, 210, 20), "blue": (20, 40, 230),
    "yellow": (235, 225, 20), "magenta": (225, 20, 225), "cyan": (20, 220, 230),
    "white": (240, 240, 240),
}
KINDS = ("square", "circle")


@dataclass(frozen=True)
class Shape:
    """A filled ``kind`` ("square" or "circle") of side/diameter ``size`` px, centred at
    ``start_xy`` in frame 0 and moving by ``velocity_xy`` px per frame."""

    kind: str
    color_name: str
    start_xy: tuple[float, float]
    velocity_xy: tuple[float, float]
    size: int = 20

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.color_name not in COLORS:
            raise ValueError(f"color_name must be one of {sorted(COLORS)}, got {self.color_name!r}")
        if self.size < 2:
            raise ValueError("size must be >= 2 px")

    @property
    def rgb(self) -> tuple[int, int, int]:
        return COLORS[self.color_name]

    def center_at(self, frame: int) -> tuple[float, float]:
        return (self.start_xy[0] + self.velocity_xy[0] * frame,
                self.start_xy[1] + self.velocity_xy[1] * frame)

    @property
    def direction(self) -> str:
        """"left", "right", "up", "down", a combination like "up-right", or "still"."""
        vx, vy = self.velocity_xy
        vertical = "up" if vy < 0 else "down" if vy > 0 else ""
        horizontal = "left" if vx < 0 else "right" if vx > 0 else ""
        return "-".join(p for p in (vertical, horizontal) if p) or "still"


# Sized for the default 112x112, 16-frame clip: both shapes stay fully inside the frame.
DEFAULT_SHAPES: tuple[Shape, ...] = (
    Shape("square", "red", (16.0, 36.0), (5.0, 0.0), 20),
    Shape("circle", "blue", (96.0, 80.0), (-5.0, 0.0), 20),
)


def render_moving_shapes(*, num_frames: int = 16, size: tuple[int, int] = (112, 112),
                         shapes: Sequence[Shape] = DEFAULT_SHAPES, seed: int = 0) -> np.ndarray:
    """The exact RGB frames ``write_moving_shapes_mp4`` encodes: ``uint8 [T, H, W, 3]``.

    ``size`` is (width, height) as in OpenCV. ``seed`` picks the dark background tint, so equal
    arguments always give identical frames. Later shapes are drawn over earlier ones.
    """
    width, height = size
    if num_frames < 1 or width < 2 or height < 2:
        raise ValueError("need num_frames >= 1 and a size of at least 2x2")
    rng = np.random.default_rng(seed)
    tint = rng.integers(8, 32, size=3)
    # A faint vertical gradient: a flat background would make some colour checks too easy.
    ramp = np.linspace(0, 12, height, dtype=np.float64)[:, None, None]
    background = np.broadcast_to(tint + ramp, (height, width, 3)).astype(np.uint8)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        img = background.copy()
        for shape in shapes:
            cx, cy = shape.center_at(t)
            half = shape.size / 2.0
            if shape.kind == "square":
                p0 = (int(round(cx - half)), int(round(cy - half)))
                p1 = (int(round(cx + half)) - 1, int(round(cy + half)) - 1)
                cv2.rectangle(img, p0, p1, shape.rgb, thickness=-1, lineType=cv2.LINE_8)
            else:
                cv2.circle(img, (int(round(cx)), int(round(cy))), int(round(half)), shape.rgb,
                           thickness=-1, lineType=cv2.LINE_8)
        frames[t] = img
    return frames


def write_video(path: str | os.PathLike, frames_rgb: np.ndarray, fps: float, fourcc: str = "mp4v") -> Path:
    """Encode RGB frames ``[T, H, W, 3]`` with ``cv2.VideoWriter``; the container follows the
    file extension (.mp4, .mkv, .avi, ...). Returns the path."""
    path = Path(path)
    _, height, width, _ = frames_rgb.shape
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), float(fps), (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {fourcc!r} video to {path}")
    try:
        for frame in frames_rgb:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    if not path.exists() or path.stat().st_size == 0:
        raise RuntimeError(f"OpenCV wrote no data to {path}")
    return path


def write_moving_shapes_mp4(path: str | os.PathLike, *, num_frames: int = 16,
                            size: tuple[int, int] = (112, 112), fps: float = 8.0,
                            shapes: Sequence[Shape] = DEFAULT_SHAPES, seed: int = 0) -> Path:
    """Write the moving-shapes clip as an MPEG-4 Part 2 ('mp4v') .mp4 file; returns its path."""
    frames = render_moving_shapes(num_frames=num_frames, size=size, shapes=shapes, seed=seed)
    return write_video(path, frames, fps, "mp4v")


def mp4_bytes(**kwargs) -> bytes:
    """The bytes of ``write_moving_shapes_mp4(**kwargs)`` (written via a temporary file)."""
    with tempfile.TemporaryDirectory(prefix="vreason-synth-") as tmp:
        return write_moving_shapes_mp4(Path(tmp) / "clip.mp4", **kwargs).read_bytes()


def mp4_data_url(**kwargs) -> str:
    """``data:video/mp4;base64,...`` for ``mp4_bytes(**kwargs)``, ready for a video_url part."""
    return "data:video/mp4;base64," + base64.b64encode(mp4_bytes(**kwargs)).decode("ascii")
