"""Server caps (``VideoLimits``) and per-request frame sampling (``SamplingSpec``)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from .errors import INVALID_SAMPLING, VideoError

DEFAULT_FPS = 2.0
# Qwen2.5-VL: 14 px patches merged 2x2, so frame sides that are multiples of 28 map onto whole
# merged tokens and the HF/vLLM processor does not resize them again.
PATCH_FACTOR = 28


@dataclass(frozen=True)
class VideoLimits:
    """Server-side caps, enforced before and during decode.

    max_bytes: encoded video size (data URL payload after base64 decoding, or file size).
    max_source_frames / max_source_pixels: caps on the *source* stream (frame count and
        width*height of each frame), checked from the container header and again while reading.
    max_frames: most frames sampled per video. max_pixels: most pixels per sampled frame after
        resizing (at least 28*28). min_frames: fewest decodable frames accepted.
    frame_multiple: sampled counts are a multiple of this (Qwen2.5-VL's temporal patch is 2).
    """

    max_bytes: int = 64 * 1024 * 1024
    max_source_frames: int = 20_000
    max_source_pixels: int = 4096 * 2160
    max_frames: int = 32
    max_pixels: int = 112 * 112
    min_frames: int = 2
    frame_multiple: int = 2

    def __post_init__(self) -> None:
        # Misconfiguration is a server bug, not a client fault: plain ValueError.
        for name in ("max_bytes", "max_source_frames", "max_source_pixels", "max_frames",
                     "max_pixels", "min_frames", "frame_multiple"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"VideoLimits.{name} must be a positive int, got {value!r}")
        if self.max_pixels < PATCH_FACTOR * PATCH_FACTOR:
            raise ValueError(f"VideoLimits.max_pixels must be >= {PATCH_FACTOR * PATCH_FACTOR}")
        if self.max_frames < self.frame_multiple:
            raise ValueError("VideoLimits.max_frames must be >= frame_multiple")
        if self.min_frames > self.max_source_frames:
            raise ValueError("VideoLimits.min_frames must be <= max_source_frames")


@dataclass(frozen=True)
class SamplingSpec:
    """How to pick frames: ``num_frames`` evenly spread, else ``fps`` frames per second.

    If ``num_frames`` is given it wins and ``fps`` is ignored; if neither is given, ``DEFAULT_FPS``.
    Invalid values raise ``VideoError`` (400) naming the request field they came from
    (``num_frames_param`` / ``fps_param``: mm_processor_kwargs or media_io_kwargs.video).
    """

    fps: float | None = None
    num_frames: int | None = None
    num_frames_param: str = "mm_processor_kwargs.num_frames"
    fps_param: str = "mm_processor_kwargs.fps"

    def __post_init__(self) -> None:
        if self.num_frames is not None:
            n = self.num_frames
            if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
                raise VideoError(f"num_frames must be a positive integer, got {n!r}",
                                 code=INVALID_SAMPLING, param=self.num_frames_param)
            object.__setattr__(self, "num_frames", int(n))
        if self.fps is not None:
            f = self.fps
            if (isinstance(f, bool) or not isinstance(f, numbers.Real)
                    or not math.isfinite(float(f)) or float(f) <= 0):
                raise VideoError(f"fps must be a positive finite number, got {f!r}",
                                 code=INVALID_SAMPLING, param=self.fps_param)
            object.__setattr__(self, "fps", float(f))
        elif self.num_frames is None:
            object.__setattr__(self, "fps", DEFAULT_FPS)

    @property
    def by_count(self) -> bool:
        """True when frames are chosen by ``num_frames`` rather than by ``fps``."""
        return self.num_frames is not None

    def check(self, limits: VideoLimits) -> None:
        """Reject a ``num_frames`` above the server cap (an fps request is capped silently
        by spreading ``max_frames`` over the video, as the fps only sets the density). The
        server caps such a count before it gets here unless its operator chose 400s."""
        if self.num_frames is not None and self.num_frames > limits.max_frames:
            raise VideoError(
                f"num_frames={self.num_frames} exceeds this server's limit of "
                f"{limits.max_frames} frames per video",
                code=INVALID_SAMPLING, param=self.num_frames_param)
