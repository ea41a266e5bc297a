from __future__ import annotations

import base64
import os

import pytest

from vreason.server.video import VideoError, VideoLimits, VideoSource, resolve_video_url

LIMITS = VideoLimits()


def _resolve(url, allowed=None, limits=LIMITS) -> VideoSource:
    return resolve_video_url(url, allowed_local_media_path=allowed, limits=limits)


def _error(url, allowed=None, limits=LIMITS) -> VideoError:
    with pytest.raises(VideoError) as err:
        _resolve(url, allowed, limits)
    assert err.value.param == "messages"
    return err.value


# ---- data: URLs ----

def test_data_url_roundtrip(clip_bytes, make_data_url):
    src = _resolve(make_data_url(clip_bytes))
    assert src.data == clip_bytes and src.path is None and src.kind == "data" and src.suffix == ".mp4"
    assert _resolve(make_data_url(clip_bytes, "webm")).suffix == ".webm"
    b64 = base64.b64encode(clip_bytes).decode()
    assert _resolve(f"  DATA:Video/MP4;codecs=mp4v;BASE64,{b64}\n").data == clip_bytes


@pytest.mark.parametrize("url, code", [
    ("data:video/mp4;base64,!!!!", "invalid_data_url"),
    ("data:video/mp4;base64,QUJD", None),                 # valid base64 ("ABC"): accepted here
    ("data:video/mp4;base64,QUI", "invalid_data_url"),     # missing padding
    ("data:video/mp4;base64,QU JD", "invalid_data_url"),   # whitespace inside
    ("data:video/mp4;base64,QUJD\n", None),                # surrounding whitespace is stripped
    ("data:video/mp4;base64,QQ==QQ==", "invalid_data_url"),  # data after padding
    ("data:video/mp4;base64,QUJD\u00e9", "invalid_data_url"),
    ("data:video/mp4;base64,-_-_", "invalid_data_url"),    # URL-safe alphabet
    ("data:image/png;base64,QUJD", "invalid_data_url"),
    ("data:;base64,QUJD", "invalid_data_url"),
    ("data:video/mp4,QUJD", "invalid_data_url"),           # not base64
    ("data:video/mp4;base64", "invalid_data_url"),         # no comma
    ("data:video/mp4;base64,", "video_empty"),
])
def test_data_url_validation(url, code):
    if code is None:
        assert _resolve(url).data == b"ABC"
        return
    err = _error(url)
    assert err.code == code and err.status == 400


def test_data_url_too_large_is_413():
    limits = VideoLimits(max_bytes=100)
    ok = _resolve("data:video/mp4;base64," + base64.b64encode(b"x" * 100).decode(), limits=limits)
    assert len(ok.data) == 100
    err = _error("data:video/mp4;base64," + base64.b64encode(b"x" * 101).decode(), limits=limits)
    assert (err.code, err.status) == ("video_too_large", 413)
    # Far too long and not even base64: refused on length alone, before any decoding.
    err = _error("data:video/mp4;base64," + "!" * 10_000_000, limits=limits)
    assert (err.code, err.status) == ("video_too_large", 413)
    assert len(err.message) < 200


# ---- file:// URLs ----

@pytest.fixture()
def media(tmp_path, clip_bytes):
    allowed = tmp_path / "media"
    (allowed / "sub").mkdir(parents=True)
    (allowed / "clip.mp4").write_bytes(clip_bytes)
    (allowed / "with space.mp4").write_bytes(clip_bytes)
    (allowed / "empty.mp4").write_bytes(b"")
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(clip_bytes)
    os.symlink(outside, allowed / "escape.mp4")
    os.symlink(allowed / "clip.mp4", allowed / "sub" / "inner.mp4")
    return allowed, outside


def test_file_url_allowed(media):
    allowed, _ = media
    src = _resolve(f"file://{allowed}/clip.mp4", str(allowed))
    assert src.path == os.path.realpath(allowed / "clip.mp4") and src.data is None and src.kind == "file"
    assert _resolve(f"file://localhost{allowed}/clip.mp4", str(allowed)).path == src.path
    assert _resolve(f"file://{allowed}/with%20space.mp4", str(allowed)).path.endswith("with space.mp4")
    # A symlink that stays inside the directory is fine and resolves to its target.
    assert _resolve(f"file://{allowed}/sub/inner.mp4", str(allowed)).path == src.path
    # The allowed directory itself may be given through a symlink.
    link = allowed.parent / "media-link"
    os.symlink(allowed, link)
    assert _resolve(f"file://{link}/clip.mp4", str(link)).path == src.path


@pytest.mark.parametrize("make_url, allowed_sub, code", [
    (lambda a, o: f"file://{a}/clip.mp4", None, "media_path_not_allowed"),       # feature off
    (lambda a, o: f"file://{o}", "", "media_path_not_allowed"),                  # outside
    (lambda a, o: f"file://{a}/escape.mp4", "", "media_path_not_allowed"),       # symlink escape
    (lambda a, o: f"file://{a}/../secret.mp4", "", "media_path_not_allowed"),    # dot-dot
    (lambda a, o: f"file://{a}/%2E%2E/secret.mp4", "", "media_path_not_allowed"),
    (lambda a, o: f"file://{a}", "sub", "media_path_not_allowed"),               # parent of root
    (lambda a, o: f"file://{a}/missing.mp4", "", "media_not_found"),
    (lambda a, o: f"file://{a}/sub", "", "media_not_found"),                     # a directory
    (lambda a, o: f"file://{a}/empty.mp4", "", "video_empty"),
    (lambda a, o: "file://clip.mp4", "", "unsupported_media_url"),               # host, not path
    (lambda a, o: "file:clip.mp4", "", "unsupported_media_url"),                 # relative
    (lambda a, o: f"file://evil.example{a}/clip.mp4", "", "unsupported_media_url"),
    (lambda a, o: f"file://{a}/clip.mp4?x=1", "", "unsupported_media_url"),
    (lambda a, o: f"file://{a}/clip%00.mp4", "", "unsupported_media_url"),
])
def test_file_url_refused(media, make_url, allowed_sub, code):
    allowed, outside = media
    allowed_path = None if allowed_sub is None else str(allowed / allowed_sub)
    err = _error(make_url(allowed, outside), allowed_path)
    assert err.code == code and err.status == 400


def test_file_url_too_large_is_413(media):
    allowed, _ = media
    err = _error(f"file://{allowed}/clip.mp4", str(allowed), VideoLimits(max_bytes=100))
    assert (err.code, err.status) == ("video_too_large", 413)


# ---- everything else ----

@pytest.mark.parametrize("url, fragment", [
    ("http://example.com/v.mp4", "http(s) video URLs are not enabled"),
    ("https://example.com/v.mp4", "http(s) video URLs are not enabled"),
    ("HTTPS://example.com/v.mp4", "http(s) video URLs are not enabled"),
    ("ftp://example.com/v.mp4", "unsupported video URL"),
    ("/abs/path/v.mp4", "unsupported video URL"),
    ("relative/v.mp4", "unsupported video URL"),
    ("", "empty"),
    ("x" * 10_000, "unsupported video URL"),
])
def test_other_urls_refused(url, fragment):
    err = _error(url)
    assert err.code == "unsupported_media_url" and err.status == 400
    assert fragment in err.message and len(err.message) < 300


def test_non_string_url():
    assert _error(b"data:video/mp4;base64,QUJD").code == "unsupported_media_url"
