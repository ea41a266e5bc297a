"""Fixtures for the reliability tests: broken and oversized videos (error-shape checks are in
tests/helpers/openai_errors.py)."""

from __future__ import annotations

import base64
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from vreason.clients.synth_video import mp4_bytes, write_video

def data_url(payload: bytes, media_type: str = "video/mp4") -> str:
    return f"data:{media_type};base64," + base64.b64encode(payload).decode("ascii")


def _unknown_codec_mp4(good: bytes) -> bytes:
    # Rename the sample entry and make the MPEG-4 descriptor name a private object type: FFmpeg
    # then finds no decoder at all for the stream ("Could not find decoder for codec_id=0").
    b = bytearray(good)
    esds = b.find(b"esds")
    dcd = b.find(b"\x04\x80\x80\x80", esds)  # DecoderConfigDescriptor, 4-byte length form
    assert esds > 0 and dcd > 0, "unexpected mp4 layout from OpenCV's writer"
    b[dcd + 5] = 0xC0
    entry = b.find(b"mp4v")
    b[entry:entry + 4] = b"zzzz"
    return bytes(b)


def _zero_size_avi(path: Path) -> bytes:
    # Uncompressed AVI: the decoder takes the frame size from the container, so zeroing it there
    # gives a stream that opens with 0x0 frames.
    writer = cv2.VideoWriter(str(path), 0, 8.0, (32, 32))
    for _ in range(4):
        writer.write(np.full((32, 32, 3), 100, np.uint8))
    writer.release()
    b = bytearray(path.read_bytes())
    avih = b.find(b"avih") + 8 + 4 * 8    # dwWidth, dwHeight after 8 DWORDs
    strf = b.find(b"strf") + 8 + 4        # biWidth, biHeight after biSize
    assert struct.unpack("<II", b[avih:avih + 8]) == (32, 32), "unexpected AVI layout"
    b[avih:avih + 8] = bytes(8)
    b[strf:strf + 8] = bytes(8)
    return bytes(b)


def _zero_frame_mp4(path: Path) -> bytes:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 8.0, (64, 64))
    writer.release()  # no frames written: a header without a movie
    return path.read_bytes() if path.exists() else b""


@pytest.fixture(scope="session")
def odd_videos(media_dir: Path) -> dict[str, str]:
    """URLs of broken, odd and oversized videos: ``file://`` ones written into ``media_dir``
    (the fixture server's allowed directory) and a few as data URLs."""
    good = mp4_bytes()
    d = media_dir / "odd"
    d.mkdir(exist_ok=True)
    ok, png = cv2.imencode(".png", np.zeros((16, 16, 3), np.uint8))
    assert ok
    files = {
        "empty": b"",
        "truncated": good[: len(good) // 2],
        "text": b"this is not a video\n" * 50,
        "png_renamed": png.tobytes(),
        "zero_frames": _zero_frame_mp4(d / "zero_frames_src.mp4"),
        "unknown_codec": _unknown_codec_mp4(good),
    }
    urls = {}
    for name, payload in files.items():
        (d / f"{name}.mp4").write_bytes(payload)
        urls[name] = f"file://{d / name}.mp4"
    (d / "zero_size.avi").write_bytes(_zero_size_avi(d / "zero_size_src.avi"))
    urls["zero_size"] = f"file://{d}/zero_size.avi"
    # 4096x2304 is over the default 4096x2160 source-pixel cap; black frames keep the file small.
    write_video(d / "huge.mp4", np.zeros((2, 2304, 4096, 3), np.uint8), 8.0)
    urls["huge_resolution"] = f"file://{d}/huge.mp4"
    # 20002 frames, over the default 20000 source-frame cap (tiny frames: ~0.3 MB, ~0.2 s).
    write_video(d / "long.mp4", np.zeros((20002, 16, 16, 3), np.uint8), 30.0)
    urls["too_long"] = f"file://{d}/long.mp4"
    urls["good"] = f"file://{media_dir / 'shapes.mp4'}"
    urls["good_data"] = data_url(good)
    urls["truncated_data"] = data_url(files["truncated"])
    urls["text_data"] = data_url(files["text"])
    urls["missing"] = f"file://{d}/no_such_video.mp4"
    urls["traversal"] = f"file://{d}/../../../../../../etc/passwd"
    return urls
