from __future__ import annotations

import base64

import numpy as np
import pytest

from vreason.clients.synth_video import render_moving_shapes, write_moving_shapes_mp4, write_video


def data_url(payload: bytes, subtype: str = "mp4") -> str:
    return f"data:video/{subtype};base64," + base64.b64encode(payload).decode("ascii")


@pytest.fixture(scope="session")
def clip_path(tmp_path_factory):
    """Default synthetic clip: 16 frames, 112x112, 8 fps, red square right, blue circle left."""
    return write_moving_shapes_mp4(tmp_path_factory.mktemp("clips") / "shapes.mp4")


@pytest.fixture(scope="session")
def clip_bytes(clip_path) -> bytes:
    return clip_path.read_bytes()


@pytest.fixture(scope="session")
def clip_frames() -> np.ndarray:
    return render_moving_shapes()


@pytest.fixture(scope="session")
def noise_mkv_bytes(tmp_path_factory) -> bytes:
    """32 frames of noise in Matroska: big frames, so a cut keeps the header but loses frames."""
    frames = np.random.default_rng(0).integers(0, 255, (32, 64, 64, 3), dtype=np.uint8)
    return write_video(tmp_path_factory.mktemp("clips") / "noise.mkv", frames, 8.0).read_bytes()


@pytest.fixture(scope="session")
def make_data_url():
    return data_url


# ---- a hostile little HTTP origin on 127.0.0.1 for the media-fetch tests ----

import threading  # noqa: E402
import time  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402
from urllib.parse import parse_qs, urlsplit  # noqa: E402

STALL_LIMIT_S = 20.0  # a stalled handler gives up by itself, so no thread outlives the test by much


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _head(self, status=200, length=None, extra=()):
        self.send_response(status)
        self.send_header("Content-Type", "video/mp4")
        if length is not None:
            self.send_header("Content-Length", str(length))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()

    def _stall(self):
        self.server.stop.wait(STALL_LIMIT_S)

    def do_GET(self):  # noqa: C901 - one branch per hostile behaviour
        srv = self.server
        parts = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        srv.seen.append((parts.path, self.headers.get("Host")))
        route = parts.path
        clip = srv.clip
        if route == "/clip.mp4":
            self._head(200, len(clip))
            self.wfile.write(clip)
        elif route == "/redirect":
            self._head(int(q.get("code", 302)), 0, [("Location", q["to"])] if q.get("to") else [])
        elif route == "/loop":
            self._head(302, 0, [("Location", "/loop")])
        elif route.startswith("/status/"):
            self._head(int(route.rsplit("/", 1)[1]), 0)
        elif route == "/empty":
            self._head(200, 0)
        elif route == "/stall-headers":
            self._stall()
        elif route == "/stall-body":
            self._head(200, len(clip))
            self.wfile.write(clip[:100])
            self.wfile.flush()
            self._stall()
        elif route == "/declared-huge":  # Content-Length over any cap, then nothing
            self._head(200, 10**12)
            self.wfile.flush()
            self._stall()
        elif route == "/lie-small":  # declares 100 bytes, sends far more
            self._head(200, 100)
            self.wfile.write(b"\0" * 100_000)
        elif route == "/lie-large":  # declares more than it sends, then hangs up
            self._head(200, 50_000)
            self.wfile.write(clip[:10])
            self.close_connection = True
        elif route == "/no-length":  # close-delimited body larger than the tests' cap
            self._head(200, None, [("Connection", "close")])
            self.close_connection = True
            self._write_for(0.0, 64 * 1024, 2 * 1024 * 1024)
        elif route == "/forever":  # chunked and endless: fast, or slow with ?delay=
            self._head(200, None, [("Transfer-Encoding", "chunked")])
            self._write_for(float(q.get("delay", 0)), int(q.get("chunk", 16384)), None, chunked=True)
        else:
            self._head(404, 0)

    def _write_for(self, delay, chunk, total, chunked=False):
        sent, deadline = 0, time.monotonic() + STALL_LIMIT_S
        try:
            while (total is None or sent < total) and time.monotonic() < deadline and not self.server.stop.is_set():
                payload = b"\0" * chunk
                self.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload) if chunked else payload)
                self.wfile.flush()
                sent += chunk
                if delay:
                    time.sleep(delay)
        except OSError:  # the client hung up, as it should
            self.close_connection = True


class MediaOrigin(ThreadingHTTPServer):
    """Threaded HTTP server on 127.0.0.1 with the hostile routes above; ``seen`` logs (path, Host)."""

    daemon_threads = True

    def __init__(self, clip: bytes):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.clip, self.seen, self.stop = clip, [], threading.Event()
        self.port = self.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def paths(self) -> list[str]:
        return [p for p, _ in self.seen]

    def close(self) -> None:
        self.stop.set()
        self.shutdown()
        self.server_close()


@pytest.fixture
def origin(clip_bytes):
    srv = MediaOrigin(clip_bytes)
    yield srv
    srv.close()


@pytest.fixture
def origin2(clip_bytes):
    srv = MediaOrigin(clip_bytes)
    yield srv
    srv.close()
