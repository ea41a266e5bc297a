"""Decode the sampled frames of a video with OpenCV (FFmpeg backend), within the caps."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from .errors import (DECODE_CANCELLED, MEDIA_NOT_FOUND, VIDEO_DECODE_FAILED, VIDEO_EMPTY,
                     VIDEO_RESOLUTION_TOO_LARGE, VIDEO_TOO_LONG, VideoError)
from .options import PATCH_FACTOR, SamplingSpec, VideoLimits
from .sampling import frame_indices_by_count, frame_indices_by_fps
from .source import VideoSource

# FFmpeg reports 0 or NaN for streams without a usable frame rate; 25 is FFmpeg's own default
# time base guess. Values above this bound are treated as broken headers rather than real rates.
FALLBACK_FPS = 25.0
MAX_PLAUSIBLE_FPS = 1000.0

_BMFF_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot"}


@dataclass(frozen=True)
class DecodedVideo:
    """Sampled frames (``uint8 [T, H, W, 3]`` RGB, C-contiguous) plus the vLLM video metadata.

    ``metadata`` has ``fps`` (native), ``duration`` (s), ``total_num_frames``,
    ``frames_indices``, ``video_backend`` and ``do_sample_frames=False`` (frames are already
    sampled). ``truncated`` is True when fewer frames could be read than the header claimed and
    the indices were re-sampled over the readable part.
    """

    frames: np.ndarray
    metadata: dict
    source_width: int
    source_height: int
    truncated: bool = False


def _failed(message: str) -> VideoError:
    return VideoError(message, code=VIDEO_DECODE_FAILED)


def _is_known_container(head: bytes) -> bool:
    # Only binary video containers reach FFmpeg: text inputs such as HLS playlists or ffconcat
    # scripts would make it open other files or URLs on our behalf.
    return (head[4:8] in _BMFF_BOXES                            # MP4 / MOV / 3GP
            or head[:4] == b"\x1a\x45\xdf\xa3"                   # Matroska / WebM
            or (head[:4] == b"RIFF" and head[8:12] == b"AVI ")   # AVI
            or head[:4] == b"OggS" or head[:3] == b"FLV"
            or head[:4] == b"\x00\x00\x01\xba"                   # MPEG program stream
            or head[:8] == b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"   # ASF / WMV
            or (len(head) > 188 and head[0] == 0x47 and head[188] == 0x47))  # MPEG-TS


@contextlib.contextmanager
def _local_path(source: VideoSource) -> Iterator[str]:
    if source.path is not None:
        try:
            with open(source.path, "rb") as f:
                head = f.read(512)
        except OSError:  # vetted by resolve_video_url, but it may have gone since
            raise VideoError("local video can no longer be read", code=MEDIA_NOT_FOUND) from None
        path, tmp = source.path, None
    else:
        head = source.data[:512]
        with tempfile.NamedTemporaryFile(prefix="vreason-video-", suffix=source.suffix, delete=False) as f:
            tmp = f.name
        path = tmp
    try:
        if not _is_known_container(head):
            raise _failed("unrecognised video format (supported containers: MP4/MOV, WebM/MKV, AVI, "
                          "Ogg, FLV, MPEG-PS/TS, ASF)")
        if tmp is not None:
            with open(tmp, "wb") as f:
                f.write(source.data)
        yield path
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def resized_shape(height: int, width: int, max_pixels: int, factor: int = PATCH_FACTOR) -> tuple[int, int]:
    """(h, w) multiples of ``factor`` (at least ``factor``), close to the source aspect ratio,
    with ``h * w <= max_pixels`` (requires ``max_pixels >= factor**2``)."""
    h = max(factor, int(height / factor + 0.5) * factor)
    w = max(factor, int(width / factor + 0.5) * factor)
    if h * w > max_pixels:
        scale = math.sqrt(max_pixels / (height * width))
        h = max(factor, math.floor(height * scale / factor) * factor)
        w = max(factor, math.floor(width * scale / factor) * factor)
        # One side was clamped up to `factor` (extreme aspect ratio): shrink the other to fit.
        if h * w > max_pixels:
            if h == factor:
                w = max(factor, max_pixels // h // factor * factor)
            else:
                h = max(factor, max_pixels // w // factor * factor)
    return h, w


def _prepare(frame: np.ndarray | None, limits: VideoLimits) -> np.ndarray:
    if frame is None or frame.dtype != np.uint8 or frame.ndim not in (2, 3):
        raise _failed("video frames have an unsupported pixel format")
    h, w = frame.shape[:2]
    if h * w > limits.max_source_pixels:  # resolution may change mid-stream
        raise VideoError(f"video frame of {w}x{h} exceeds this server's limit of "
                         f"{limits.max_source_pixels} pixels per frame", code=VIDEO_RESOLUTION_TOO_LARGE)
    th, tw = resized_shape(h, w, limits.max_pixels)
    if (th, tw) != (h, w):
        frame = cv2.resize(frame, (tw, th), interpolation=cv2.INTER_AREA)
    if frame.ndim == 2:
        code = cv2.COLOR_GRAY2RGB
    elif frame.shape[2] == 4:
        code = cv2.COLOR_BGRA2RGB
    elif frame.shape[2] == 3:
        code = cv2.COLOR_BGR2RGB
    else:
        raise _failed("video frames have an unsupported number of channels")
    return np.ascontiguousarray(cv2.cvtColor(frame, code))


def _read(path: str, wanted: set[int], limits: VideoLimits,
          cancel: threading.Event | None) -> tuple[dict[int, np.ndarray], int]:
    """Read sequentially up to max(wanted); return kept frames and the count of frames read."""
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    kept: dict[int, np.ndarray] = {}
    pos = 0
    try:
        last = max(wanted)
        # grab() without retrieve() skips the colour conversion and copy of unwanted frames.
        while pos <= last:
            if cancel is not None and cancel.is_set():
                raise VideoError("video decode cancelled", code=DECODE_CANCELLED)
            if pos >= limits.max_source_frames:
                raise VideoError(f"video has more than {limits.max_source_frames} frames",
                                 code=VIDEO_TOO_LONG)
            if not cap.grab():
                break
            if pos in wanted:
                ok, frame = cap.retrieve()
                if not ok:
                    break
                kept[pos] = _prepare(frame, limits)
            pos += 1
    finally:
        cap.release()
    return kept, pos


def _indices(spec: SamplingSpec, total: int, native_fps: float, limits: VideoLimits) -> list[int]:
    if spec.by_count:
        return frame_indices_by_count(total, spec.num_frames, limits.frame_multiple)
    return frame_indices_by_fps(total, native_fps, spec.fps, limits.max_frames, limits.frame_multiple)


def _probe(path: str, limits: VideoLimits) -> tuple[int, int, int, float]:
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    try:
        if not cap.isOpened():
            raise _failed("could not open the video (corrupt, truncated or unsupported codec?)")
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        total = int(count) if math.isfinite(count) else 0
        width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        native_fps = cap.get(cv2.CAP_PROP_FPS)
    finally:
        cap.release()
    if total <= 0:
        raise VideoError("video has no frames", code=VIDEO_EMPTY)
    if width <= 0 or height <= 0:
        raise _failed("video has no valid frame size")
    if width * height > limits.max_source_pixels:
        raise VideoError(f"video resolution {width}x{height} exceeds this server's limit of "
                         f"{limits.max_source_pixels} pixels per frame", code=VIDEO_RESOLUTION_TOO_LARGE)
    if total > limits.max_source_frames:
        raise VideoError(f"video has {total} frames, over this server's limit of "
                         f"{limits.max_source_frames}", code=VIDEO_TOO_LONG)
    if not (math.isfinite(native_fps) and 0 < native_fps <= MAX_PLAUSIBLE_FPS):
        native_fps = FALLBACK_FPS
    return total, width, height, float(native_fps)


def decode_video(source: VideoSource, spec: SamplingSpec, limits: VideoLimits, *,
                 cancel: threading.Event | None = None) -> DecodedVideo:
    """Decode the frames ``spec`` selects from ``source``, enforcing ``limits``.

    Blocking (run it off the event loop). Header checks (opens, frame count > 0, resolution,
    frame count cap) happen before any frame is decoded; while reading, only frames up to the
    last selected index are decoded. If the stream ends early (truncated file, header
    overstating the count) and at least ``limits.min_frames`` frames were readable, indices are
    re-sampled over the readable frames. Each frame is resized (INTER_AREA) to sides that are
    multiples of 28 with at most ``limits.max_pixels`` pixels, and converted to RGB.
    Raises ``VideoError`` for every problem caused by the input.
    """
    spec.check(limits)
    try:
        return _decode(source, spec, limits, cancel)
    except cv2.error:  # OpenCV rejecting what FFmpeg produced is still a bad input
        raise _failed("video frames could not be converted (unsupported pixel format?)") from None


def _decode(source: VideoSource, spec: SamplingSpec, limits: VideoLimits,
            cancel: threading.Event | None) -> DecodedVideo:
    with _local_path(source) as path:
        total, width, height, native_fps = _probe(path, limits)
        indices = _indices(spec, total, native_fps, limits)
        kept, readable = _read(path, set(indices), limits, cancel)
        truncated = readable <= max(indices)
        if truncated:
            if readable < limits.min_frames:
                raise _failed(f"could not decode frames from the video (truncated or corrupt?): "
                              f"{readable} of {total} frames readable")
            total = readable
            indices = _indices(spec, total, native_fps, limits)
            missing = set(indices) - kept.keys()
            if missing:
                more, _ = _read(path, missing, limits, cancel)
                kept.update(more)
            if not set(indices) <= kept.keys():
                raise _failed("could not decode frames from the video (decoding is not repeatable)")
    frames = [kept[i] for i in indices]
    if len({f.shape for f in frames}) != 1:
        raise _failed("video frame size changes mid-stream")
    metadata = {"fps": native_fps, "duration": total / native_fps, "total_num_frames": total,
                "frames_indices": list(indices), "video_backend": "opencv", "do_sample_frames": False}
    return DecodedVideo(frames=np.stack(frames), metadata=metadata, source_width=width,
                        source_height=height, truncated=truncated)
