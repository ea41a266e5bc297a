"""Client-facing errors raised by video loading.

Every failure caused by the request (bad URL, corrupt file, caps exceeded) is a ``VideoError``,
so the API layer can map it to an OpenAI-shaped 4xx without inspecting the message. Anything
else escaping this package is a server bug.
"""

from __future__ import annotations

from vreason.server.errors import ClientError

# Machine-readable codes. Strings rather than an Enum so they serialise as-is into the
# OpenAI error body's "code" field.
VIDEO_TOO_LARGE = "video_too_large"                       # encoded bytes over the cap (413)
VIDEO_TOO_LONG = "video_too_long"                         # more source frames than allowed
VIDEO_RESOLUTION_TOO_LARGE = "video_resolution_too_large"  # source width*height over the cap
VIDEO_DECODE_FAILED = "video_decode_failed"               # unreadable, truncated or unknown format
VIDEO_EMPTY = "video_empty"                               # zero bytes or zero frames
MEDIA_PATH_NOT_ALLOWED = "media_path_not_allowed"         # file:// outside the allowed directory
MEDIA_NOT_FOUND = "media_not_found"                       # file:// inside it, but missing / not a file
UNSUPPORTED_MEDIA_URL = "unsupported_media_url"           # scheme we do not serve (http, ftp, ...)
INVALID_DATA_URL = "invalid_data_url"                     # malformed data: URL or bad base64
INVALID_SAMPLING = "invalid_video_sampling"               # bad fps / num_frames
DECODE_CANCELLED = "video_decode_cancelled"               # the waiting request went away
MEDIA_FETCH_DISALLOWED = "media_fetch_disallowed"         # http(s) off, host not allowed, blocked address
MEDIA_FETCH_FAILED = "media_fetch_failed"                 # origin error, bad redirect, too many redirects
MEDIA_FETCH_TIMEOUT = "media_fetch_timeout"               # connect or total download timeout (504)


class VideoError(ClientError):
    """A request-caused video failure (a ``ClientError`` whose ``param`` defaults to "messages").

    ``status`` is the HTTP status to answer with: 400, or 413 when the payload is too large;
    fetching an http(s) URL adds 422 (unusable answer), 502 (origin failed) and 504 (timeout).
    ``param`` names the offending request field ("messages" for the content part itself).
    """

    def __init__(self, message: str, *, code: str, param: str | None = "messages", status: int = 400):
        super().__init__(message, param=param, code=code, status=status)
