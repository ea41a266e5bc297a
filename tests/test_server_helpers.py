"""The e2e tests' server launcher: a port taken between choosing it and binding it is retried."""

from __future__ import annotations

import sys

import httpx
import pytest

from tests.helpers.servers import PORT_ATTEMPTS, _kill_group, clean_env, launch

# Stands in for a server: exits as a server does when its port is taken, for the first `fails`
# starts, then serves files (GET /health finds the file "health") on the port it is given.
FAKE_SERVER = """
import http.server, pathlib, sys
port, root, fails, text = int(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
starts = root / "starts"
starts.write_text(str(int(starts.read_text() or 0) + 1) if starts.exists() else "1")
if int(starts.read_text()) <= fails:
    print(text, flush=True)
    sys.exit(4)
handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(root))
http.server.ThreadingHTTPServer(("127.0.0.1", port), handler).serve_forever()
"""


def _launch(tmp_path, fails: int, text: str):
    (tmp_path / "health").write_text("ok")
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)

    def command(port: int) -> list[str]:
        return [sys.executable, str(script), str(port), str(tmp_path), str(fails), text]

    return launch(command, tmp_path / "server.log", clean_env(), 60, "fake server")


def _starts(tmp_path) -> int:
    return int((tmp_path / "starts").read_text())


def test_a_taken_port_is_retried_on_another(tmp_path):
    proc, url = _launch(tmp_path, fails=1, text="vreason serve: cannot listen: [Errno 98] Address already in use")
    try:
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200 and _starts(tmp_path) == 2
    finally:
        _kill_group(proc)


def test_retries_are_bounded(tmp_path):
    with pytest.raises(pytest.fail.Exception, match="exited with 4"):
        _launch(tmp_path, fails=PORT_ATTEMPTS, text="[Errno 98] Address already in use")
    assert _starts(tmp_path) == PORT_ATTEMPTS


def test_another_exit_fails_at_once(tmp_path):
    with pytest.raises(pytest.fail.Exception, match="model not found"):
        _launch(tmp_path, fails=1, text="model not found")
    assert _starts(tmp_path) == 1
