"""Video input for the server: URL vetting, media fetching, frame sampling and OpenCV decoding,
within caps.

Only numpy, OpenCV, httpx and the standard library are imported here, so the API layer and
tests can use it without torch or vLLM. ``load_video`` is the entry point for async code.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

from .decode import DecodedVideo, decode_video, resized_shape
from .errors import VideoError
from .fetch import FetchPolicy, blocked_reason, fetch_video
from .options import DEFAULT_FPS, SamplingSpec, VideoLimits
from .sampling import frame_indices_by_count, frame_indices_by_fps
from .source import VideoSource, is_http_url, resolve_video_url

__all__ = [
    "DEFAULT_FPS", "DecodedVideo", "FetchPolicy", "SamplingSpec", "VideoError", "VideoLimits",
    "VideoSource", "blocked_reason", "decode_video", "fetch_video", "frame_indices_by_count",
    "frame_indices_by_fps", "load_video", "resized_shape", "resolve_video_url",
]

# Decoding is CPU- and memory-heavy (FFmpeg uses its own threads per stream too), so a few
# workers is enough; the semaphore keeps queued requests waiting in the event loop rather than
# piling their payloads into the executor queue.
MAX_CONCURRENT_DECODES = 4
# Downloads wait on the network, not the CPU, so they get their own, larger bound; it still caps
# the memory held by bodies in flight at MAX_CONCURRENT_FETCHES * the byte cap.
MAX_CONCURRENT_FETCHES = 8
_executor = ThreadPoolExecutor(max_workers=MAX_CONCURRENT_DECODES, thread_name_prefix="vreason-video")
# asyncio primitives belong to one event loop; keep one semaphore per loop and kind (tests and
# tools may run several loops in turn in one process).
_semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary())


def _semaphore(kind: str = "decode") -> asyncio.Semaphore:
    per_loop = _semaphores.setdefault(asyncio.get_running_loop(), {})
    sem = per_loop.get(kind)
    if sem is None:
        size = MAX_CONCURRENT_DECODES if kind == "decode" else MAX_CONCURRENT_FETCHES
        sem = per_loop[kind] = asyncio.Semaphore(size)
    return sem


def _resolve_and_decode(url: str, source: VideoSource | None, spec: SamplingSpec, limits: VideoLimits,
                        allowed_local_media_path: str | None, cancel: threading.Event) -> DecodedVideo:
    if source is None:
        source = resolve_video_url(url, allowed_local_media_path=allowed_local_media_path, limits=limits)
    return decode_video(source, spec, limits, cancel=cancel)


async def load_video(url: str, *, spec: SamplingSpec | None = None, limits: VideoLimits | None = None,
                     allowed_local_media_path: str | None = None,
                     fetch_policy: FetchPolicy | None = None) -> DecodedVideo:
    """Resolve ``url`` and decode its sampled frames in a worker thread.

    ``http(s)`` URLs are downloaded on the event loop first when ``fetch_policy`` is enabled
    (at most ``MAX_CONCURRENT_FETCHES`` at once); otherwise they are refused. At most
    ``MAX_CONCURRENT_DECODES`` decodes run at once. If the awaiting task is cancelled (client
    gone), a download stops at once and a decode at its next frame. Raises ``VideoError`` for
    bad input.
    """
    spec = spec if spec is not None else SamplingSpec()
    limits = limits if limits is not None else VideoLimits()
    source = None
    if fetch_policy is not None and fetch_policy.enabled and is_http_url(url):
        spec.check(limits)  # refuse a bad request before spending a download on it
        async with _semaphore("fetch"):
            source = await fetch_video(url.strip(), fetch_policy, limits)
    cancel = threading.Event()
    async with _semaphore():
        future = asyncio.get_running_loop().run_in_executor(
            _executor, _resolve_and_decode, url, source, spec, limits, allowed_local_media_path, cancel)
        try:
            return await future
        except asyncio.CancelledError:
            # Cancelling the future only drops a job that has not started; a running decode
            # polls this event between frames.
            cancel.set()
            raise
