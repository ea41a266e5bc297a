"""Turn a ``video_url`` string into bytes or a vetted local path, refusing everything else."""

from __future__ import annotations

import binascii
import os
import re
import stat
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from .errors import (INVALID_DATA_URL, MEDIA_NOT_FOUND, MEDIA_PATH_NOT_ALLOWED, UNSUPPORTED_MEDIA_URL,
                     VIDEO_EMPTY, VIDEO_TOO_LARGE, VideoError)
from .options import VideoLimits

_MEDIA_TYPE = re.compile(r"video/[a-z0-9][a-z0-9.+-]{0,63}")
# A file suffix only helps FFmpeg's probe; the content decides. Unknown subtypes get a neutral one.
_SUFFIX = {"mp4": ".mp4", "quicktime": ".mov", "webm": ".webm", "x-matroska": ".mkv",
           "x-msvideo": ".avi", "avi": ".avi", "mpeg": ".mpg", "mp2t": ".ts", "ogg": ".ogv",
           "x-flv": ".flv", "3gpp": ".3gp"}
_KNOWN_SUFFIXES = frozenset(_SUFFIX.values()) | {".m4v", ".mpeg", ".ogg"}


@dataclass(frozen=True)
class VideoSource:
    """Either the encoded video ``data`` or a ``path`` (realpath, checked) to a local file."""

    data: bytes | None = None
    path: str | None = None
    suffix: str = ".mp4"

    def __post_init__(self) -> None:
        if (self.data is None) == (self.path is None):
            raise ValueError("VideoSource needs exactly one of data or path")

    @property
    def kind(self) -> str:
        return "data" if self.data is not None else "file"


def short_url(url: str) -> str:
    """``repr`` of ``url`` cut to 80 characters, for error messages and logs."""
    # Never echo a multi-megabyte data URL back into an error message or a log line.
    return repr(url if len(url) <= 80 else url[:77] + "...")




def suffix_for(extension: str) -> str:
    """A file suffix FFmpeg can probe with, from a URL path's extension (content decides anyway)."""
    ext = extension.lower()
    return ext if ext in _KNOWN_SUFFIXES else ".video"


def too_large(what: str, size_desc: str, cap: int) -> VideoError:
    """The 413 for media over the byte cap: "<what> is <size_desc>, over this server's limit"."""
    return VideoError(f"{what} is {size_desc}, over this server's limit of {cap} bytes",
                      code=VIDEO_TOO_LARGE, status=413)


def decode_base64_payload(payload: str, limits: VideoLimits, what: str) -> bytes:
    """A data URL's payload as bytes: strict base64, non-empty, at most ``limits.max_bytes``.

    ``what`` names the URL in the errors ("video data URL", "image frame data URL").
    """
    if not payload:
        raise VideoError(f"{what} has an empty payload", code=VIDEO_EMPTY)
    # Refuse by encoded length first, so an oversized body is never decoded into memory.
    if len(payload) > 4 * -(-limits.max_bytes // 3):
        raise too_large(what, f"about {len(payload) * 3 // 4} bytes", limits.max_bytes)
    try:
        data = binascii.a2b_base64(payload.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise VideoError(f"{what} payload is not valid base64 ({exc})", code=INVALID_DATA_URL) from None
    if not data:
        raise VideoError(f"{what} has an empty payload", code=VIDEO_EMPTY)
    if len(data) > limits.max_bytes:
        raise too_large(what, f"{len(data)} bytes", limits.max_bytes)
    return data


def _from_data_url(url: str, limits: VideoLimits) -> VideoSource:
    header, comma, payload = url[5:].partition(",")
    if not comma:
        raise VideoError("malformed data URL: no ',' before the payload", code=INVALID_DATA_URL)
    params = [p.strip().lower() for p in header.split(";")]
    media_type = params[0]
    if not _MEDIA_TYPE.fullmatch(media_type):
        raise VideoError(f"data URL media type must be video/<subtype>, got {media_type[:40]!r}",
                         code=INVALID_DATA_URL)
    if len(params) < 2 or params[-1] != "base64":
        raise VideoError("video data URLs must be base64-encoded (data:video/<subtype>;base64,...)",
                         code=INVALID_DATA_URL)
    data = decode_base64_payload(payload, limits, "video data URL")
    return VideoSource(data=data, suffix=_SUFFIX.get(media_type[6:], ".video"))


def from_file_url(url: str, allowed_local_media_path: str | None, limits: VideoLimits) -> VideoSource:
    """A vetted ``file://`` URL inside ``allowed_local_media_path`` (see ``resolve_video_url``)."""
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise VideoError(f"file URL must be file:///<absolute path> with no host, query or fragment, "
                         f"got {short_url(url)}", code=UNSUPPORTED_MEDIA_URL)
    path = unquote(parts.path)
    if not path.startswith("/") or "\x00" in path:
        raise VideoError(f"file URL must name an absolute path, got {short_url(url)}",
                         code=UNSUPPORTED_MEDIA_URL)
    if not allowed_local_media_path:
        raise VideoError("file:// video URLs are disabled on this server (no allowed local media path)",
                         code=MEDIA_PATH_NOT_ALLOWED)
    root = os.path.realpath(allowed_local_media_path)
    real = os.path.realpath(path)  # resolves symlinks and '..' so they cannot escape the root
    if os.path.commonpath([root, real]) != root:
        raise VideoError(f"{short_url(path)} is outside the allowed local media directory",
                         code=MEDIA_PATH_NOT_ALLOWED)
    try:
        st = os.stat(real)
    except OSError:
        raise VideoError(f"local video {short_url(path)} does not exist or cannot be read",
                         code=MEDIA_NOT_FOUND) from None
    if not stat.S_ISREG(st.st_mode):
        raise VideoError(f"local video {short_url(path)} is not a regular file", code=MEDIA_NOT_FOUND)
    if st.st_size == 0:
        raise VideoError(f"local video {short_url(path)} is empty", code=VIDEO_EMPTY)
    if st.st_size > limits.max_bytes:
        raise too_large("video", f"{st.st_size} bytes", limits.max_bytes)
    return VideoSource(path=real, suffix=os.path.splitext(real)[1] or ".video")


def is_http_url(url: object) -> bool:
    """True for an ``http://`` or ``https://`` URL (any case, surrounding whitespace ignored)."""
    return isinstance(url, str) and url.strip()[:8].lower().startswith(("http://", "https://"))


def resolve_video_url(url: str, *, allowed_local_media_path: str | None, limits: VideoLimits) -> VideoSource:
    """Validate a ``video_url`` and return its bytes or vetted local path.

    Accepted: ``data:video/<subtype>[;params];base64,<payload>`` (strict base64, non-empty,
    decoded size <= ``limits.max_bytes``), and ``file:///<absolute path>`` when
    ``allowed_local_media_path`` is set and the path, with symlinks resolved, is a non-empty
    regular file inside that directory (also resolved) of at most ``limits.max_bytes``.
    ``http(s)://`` URLs are refused here: ``load_video`` downloads them first (``fetch.fetch_video``)
    when the server's fetch policy allows it. Everything else raises ``VideoError`` (400, or 413
    when too large).
    """
    if not isinstance(url, str):
        raise VideoError("video_url.url must be a string", code=UNSUPPORTED_MEDIA_URL)
    url = url.strip()
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return _from_data_url(url, limits)
    if scheme == "file":
        return from_file_url(url, allowed_local_media_path, limits)
    if scheme in ("http", "https"):
        # Downloads are async (``fetch.fetch_video``); ``load_video`` fetches before it gets here.
        raise VideoError("http(s) video URLs are not enabled on this server; send the video as a "
                         "data:video/...;base64 URL", code=UNSUPPORTED_MEDIA_URL)
    if not url:
        raise VideoError("video_url.url is empty", code=UNSUPPORTED_MEDIA_URL)
    raise VideoError(f"unsupported video URL {short_url(url)}: expected data:video/<subtype>;base64,... "
                     "or file:///<absolute path>", code=UNSUPPORTED_MEDIA_URL)
