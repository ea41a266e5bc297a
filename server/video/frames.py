"""Videos given as lists of still frames, the way evaluation harnesses send them.

lmms-eval's and VLMEvalKit's OpenAI backends decode videos themselves and send N base64
`image_url` parts; vLLM's own format packs JPEG frames into one
`data:video/jpeg;base64,<f1>,<f2>,...` URL. Both become one `DecodedVideo` here: frames are
decoded with OpenCV, resized like decoded video frames, and assumed evenly spaced at `fps`.
"""

from __future__ import annotations

import asyncio
import re

import cv2
import numpy as np

from .decode import DecodedVideo, _prepare
from .errors import INVALID_DATA_URL, UNSUPPORTED_MEDIA_URL, VIDEO_DECODE_FAILED, VIDEO_TOO_LONG, VideoError
from .options import VideoLimits
from .sampling import spread
from .source import decode_base64_payload, from_file_url

_IMAGE_DATA = re.compile(r"data:image/[a-z0-9.+-]+;base64,", re.I)
FRAME_LIST_PREFIX = "data:video/jpeg;base64,"


def is_frame_list_url(url: str) -> bool:
    """vLLM's pre-extracted-frames URL: several comma-separated base64 JPEGs."""
    return url[:len(FRAME_LIST_PREFIX)].lower() == FRAME_LIST_PREFIX and "," in url[len(FRAME_LIST_PREFIX):]


def split_frame_list(url: str) -> list[str]:
    return ["data:image/jpeg;base64," + p for p in url[len(FRAME_LIST_PREFIX):].split(",")]


def _image_bytes(url: str, limits: VideoLimits, allowed_local_media_path: str | None) -> bytes:
    m = _IMAGE_DATA.match(url)
    if m:
        return decode_base64_payload(url[m.end():], limits, "image frame data URL")
    if url.startswith("data:"):
        raise VideoError("image frames must be data:image/<type>;base64,... URLs", code=INVALID_DATA_URL)
    if url.startswith("file://"):
        source = from_file_url(url, allowed_local_media_path, limits)
        with open(source.path, "rb") as fh:
            return fh.read()
    raise VideoError("image URLs must be data: or file:// URLs on this server", code=UNSUPPORTED_MEDIA_URL)


def pick_frames(urls: list[str], n: int | None) -> list[str]:
    """``n`` of the frames, evenly spread (first and last kept); all of them for None or n >= len."""
    if n is None or n >= len(urls):
        return urls
    return [urls[i] for i in spread(len(urls), n)]


def decode_frames(urls: list[str], *, fps: float, limits: VideoLimits,
                  allowed_local_media_path: str | None = None) -> DecodedVideo:
    """Decode image URLs into one evenly spaced frame sequence (padded to the frame multiple)."""
    if len(urls) > limits.max_frames:
        raise VideoError(f"{len(urls)} frames given; this server accepts at most {limits.max_frames} per video",
                         code=VIDEO_TOO_LONG)
    frames, shape, src = [], None, (0, 0)
    for i, url in enumerate(urls):
        data = _image_bytes(url, limits, allowed_local_media_path)
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
        if img is None:
            raise VideoError(f"frame {i} is not a decodable image", code=VIDEO_DECODE_FAILED)
        if shape is None:
            src = (img.shape[1], img.shape[0])
        rgb = _prepare(img, limits)
        if shape is None:
            shape = rgb.shape[:2]
        elif rgb.shape[:2] != shape:  # frames of one video share one size
            rgb = cv2.resize(rgb, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
        frames.append(rgb)
    while len(frames) < max(limits.min_frames, 1) or len(frames) % limits.frame_multiple:
        frames.append(frames[-1])
    n = len(frames)
    meta = {"fps": float(fps), "duration": n / fps, "total_num_frames": n, "frames_indices": list(range(n)),
            "video_backend": "opencv", "do_sample_frames": False}
    return DecodedVideo(np.ascontiguousarray(np.stack(frames)), meta, src[0], src[1])


async def load_frames(urls: list[str], *, fps: float, limits: VideoLimits,
                      allowed_local_media_path: str | None = None) -> DecodedVideo:
    """`decode_frames` off the event loop."""
    return await asyncio.to_thread(decode_frames, urls, fps=fps, limits=limits,
                                   allowed_local_media_path=allowed_local_media_path)
