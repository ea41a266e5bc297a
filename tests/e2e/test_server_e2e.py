"""End to end: `vreason serve` on loopback with the demo model, driven by the real openai SDK."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers.clips import LONG_CLIP
from tests.helpers.messages import QUESTION, video_messages
from tests.helpers.servers import clean_env
from vreason.clients.synth_video import mp4_data_url

pytestmark = pytest.mark.slow


def test_non_stream_answer_shape_and_usage(client, server):
    r = client.chat.completions.create(model=server.model, messages=video_messages(mp4_data_url()),
                                       max_tokens=12, temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert len(r.choices) == 1 and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in ("length", "stop")
    # 128 video tokens (4 frames of 112x112 -> 2 temporal x 4x4 merged patches... ) plus the text
    assert r.usage.prompt_tokens > 32
    assert r.usage.completion_tokens in range(1, 13)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_stream_matches_non_stream(client, server, media_dir):
    url = f"file://{media_dir / 'shapes.mp4'}"
    full = client.chat.completions.create(model=server.model, messages=video_messages(url),
                                          max_tokens=10, temperature=0)
    chunks = list(client.chat.completions.create(
        model=server.model, messages=video_messages(url), max_tokens=10, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("length", "stop")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_sse_framing_ends_with_done(server):
    body = {"model": server.model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4,
            "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert all(ln.startswith("data: ") for ln in lines)
    assert lines[-1] == "data: [DONE]"
    for ln in lines[:-1]:
        assert json.loads(ln[6:])["object"] == "chat.completion.chunk"


def test_greedy_equals_stock_vllm_offline(client, server, demo_model, media_dir):
    video = media_dir / LONG_CLIP  # 8 temporal patches
    r = client.chat.completions.create(model=server.model, messages=video_messages(f"file://{video}"),
                                       max_tokens=24, temperature=0)
    script = Path(__file__).with_name("stock_generate.py")
    out = subprocess.run([sys.executable, str(script), str(demo_model), str(video), QUESTION, "24"],
                         capture_output=True, text=True, timeout=600, env=clean_env())
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, out.stdout[-2000:] + out.stderr[-4000:]
    stock = json.loads(lines[-1][7:])
    assert r.choices[0].message.content == stock["text"]
    assert r.usage.completion_tokens == stock["num_tokens"]


def test_models_health_version(server):
    m = httpx.get(f"{server.url}/v1/models").json()
    assert m["data"][0]["id"] == server.model and m["data"][0]["max_model_len"] == 4096
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert "version" in httpx.get(f"{server.url}/version").json()


@pytest.mark.parametrize("body,status,param", [
    ({"model": "demo"}, 400, "messages"),
    ({"model": "demo", "messages": "hi"}, 400, "messages"),
    ({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
    ({"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}, 400, "max_tokens"),
    ({"model": "demo", "messages": [{"role": "user", "content": "hi"}], "vreason": {"lr": -1}}, 400, "vreason.lr"),
    ({"model": "demo", "messages": [{"role": "user", "content": "hi"}], "vreason": {"bogus": 1}}, 400,
     "vreason.bogus"),
    ({"model": "demo", "messages": video_messages("data:video/mp4;base64,AAAAAAAA")}, 400, "messages"),
    ({"model": "demo", "messages": video_messages("data:video/mp4;base64,@@notbase64@@")}, 400, "messages"),
    ({"model": "demo", "messages": video_messages("file:///etc/passwd")}, 400, "messages"),
    ({"model": "demo", "messages": video_messages("http://127.0.0.1:1/x.mp4")}, 400, "messages"),
])
def test_client_errors_are_openai_shaped(server, body, status, param):
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param
    assert "Traceback" not in r.text


def test_malformed_json_and_truncated_video(server, media_dir):
    r = httpx.post(f"{server.url}/v1/chat/completions", content=b"{not json",
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    data = (media_dir / "shapes.mp4").read_bytes()
    cut = media_dir / "cut.mp4"
    cut.write_bytes(data[: len(data) // 3])
    r = httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={
        "model": "demo", "messages": video_messages(f"file://{cut}"), "max_tokens": 4})
    assert r.status_code == 400 and r.json()["error"]["code"].startswith("video_")


def test_sdk_raises_bad_request_for_corrupt_video(client, server):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=server.model, max_tokens=4,
                                       messages=video_messages("data:video/mp4;base64,AAAAAAAA"))


def test_idle_connection_outlives_client_pools_keep_alive(server):
    """A connection idle for longer than httpx's (and so the OpenAI SDK's) 5 s pool keep-alive is
    still open: a pooled client never reuses one the server is closing at that very moment."""
    import socket
    import time
    from urllib.parse import urlparse

    u = urlparse(server.url)
    request = f"GET /health HTTP/1.1\r\nHost: {u.hostname}\r\n\r\n".encode()
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(request)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        time.sleep(6.5)  # uvicorn's default keep-alive (5 s) would have closed it by now
        s.sendall(request)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
