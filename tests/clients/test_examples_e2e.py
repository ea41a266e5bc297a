"""The examples in clients/examples run against the real server."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parents[2] / "clients" / "examples"


def run_example(args: list[str], server, media_dir, *extra: str) -> str:
    cmd = [
        *args,
        "--base-url",
        server.url,
        "--model",
        server.model,
        "--video",
        str(media_dir / "shapes.mp4"),
        "--max-tokens",
        "12",
        *extra,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r.stdout


def test_curl(server, media_dir):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    out = run_example(["bash", str(EXAMPLES / "curl_chat.sh")], server, media_dir, "--question", 'Say "hi"?')
    body = json.loads(out)
    assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] == 12


@pytest.mark.parametrize("script", ["requests_chat.py", "openai_chat.py"])
def test_requests_and_sdk(server, media_dir, script):
    out = run_example([sys.executable, str(EXAMPLES / script)], server, media_dir)
    assert "answer:" in out and "finish_reason: length" in out and "'completion_tokens': 12" in out


def test_sdk_stream_with_trace(server, media_dir):
    out = run_example([sys.executable, str(EXAMPLES / "openai_stream.py")], server, media_dir, "--vreason")
    assert "'completion_tokens': 12" in out
    assert "trace rows streamed: 12" in out and "'updates': 6" in out


def test_sdk_extra_body_options_and_trace(server, media_dir, tmp_path):
    out = run_example(
        [sys.executable, str(EXAMPLES / "openai_vreason_trace.py")],
        server,
        media_dir,
        "--update-every",
        "3",
        "--lr",
        "0.02",
        "--save-trace",
        str(tmp_path / "t.json"),
    )
    trace = json.loads((tmp_path / "t.json").read_text())
    assert len(trace["steps"]) == 12 and trace["updates"] + trace["skipped_updates"] == 4  # t = 3, 6, 9, 12
    assert f"updates: {trace['updates']}" in out and "step  entropy" in out
