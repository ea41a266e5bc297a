"""Video input for the server: URL vetting, frame sampling and OpenCV decoding, within caps.

Only numpy, OpenCV and the standard library are imported here, so the API layer and tests can
use it without torch or vLLM. ``load_video`` is the entry point for async code.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

from .decode import DecodedVideo, decode_video, resized_shape
from .errors import VideoError
from .options import DEFAULT_FPS, SamplingSpec, VideoLimits
from .sampling import frame_indices_by_count, frame_indices_by_fps
from .source import VideoSource, resolve_video_url

__all__ = [
    "DEFAULT_FPS", "DecodedVideo", "SamplingSpec", "VideoError", "VideoLimits", "VideoSource",
    "decode_video", "frame_indices_by_count", "frame_indices_by_fps", "load_video",
    "resized_shape", "resolve_video_url",
]

# Decoding is CPU- and memory-heavy (FFmpeg uses its own threads per stream too), so a few
# workers is enough; the semaphore keeps queued requests waiting in the event loop rather than
# piling their payloads into the executor queue.
MAX_CONCURRENT_DECODES = 4
_executor = ThreadPoolExecutor(max_workers=MAX_CONCURRENT_DECODES, thread_name_prefix="vreason-video")
# asyncio primitives belong to one event loop; keep one semaphore per loop (tests and tools may
# run several loops in turn in one process).
_semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary())


def _semaphore() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    sem = _semaphores.get(loop)
    if sem is None:
        sem = _semaphores[loop] = asyncio.Semaphore(MAX_CONCURRENT_DECODES)
    return sem


def _resolve_and_decode(url: str, spec: SamplingSpec, limits: VideoLimits,
                        allowed_local_media_path: str | None, cancel: threading.Event) -> DecodedVideo:
    source = resolve_video_url(url, allowed_local_media_path=allowed_local_media_path, limits=limits)
    return decode_video(source, spec, limits, cancel=cancel)


async def load_video(url: str, *, spec: SamplingSpec | None = None, limits: VideoLimits | None = None,
                     allowed_local_media_path: str | None = None) -> DecodedVideo:
    """Resolve ``url`` and decode its sampled frames in a worker thread.

    At most ``MAX_CONCURRENT_DECODES`` decodes run at once. If the awaiting task is cancelled
    (client gone), the worker stops at its next frame. Raises ``VideoError`` for bad input.
    """
    spec = spec if spec is not None else SamplingSpec()
    limits = limits if limits is not None else VideoLimits()
    cancel = threading.Event()
    async with _semaphore():
        future = asyncio.get_running_loop().run_in_executor(
            _executor, _resolve_and_decode, url, spec, limits, allowed_local_media_path, cancel)
        try:
            return await future
        except asyncio.CancelledError:
            # Cancelling the future only drops a job that has not started; a running decode
            # polls this event between frames.
            cancel.set()
            raise
