"""Operations on a real server: API key, body limit, /metrics, graceful SIGTERM (runs last)."""

from __future__ import annotations

import json
import signal

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.messages import video_messages
from tests.helpers.servers import start_server, stop_server

pytestmark = pytest.mark.slow
KEY = "test-key-123"


@pytest.fixture(scope="module")
def ops_server(demo_model, media_dir, tmp_path_factory):
    s = start_server(demo_model, media_dir, tmp_path_factory.mktemp("ops") / "server.log",
                     "--api-key", KEY, "--max-body-bytes", "200000",
                     "--allowed-media-hosts", "127.0.0.1,media.invalid", "--media-allow-private")
    yield s
    if s.proc.poll() is None:
        stop_server(s)


def sdk(server, key=KEY):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=120)


def test_api_key_required(ops_server):
    with pytest.raises(openai.AuthenticationError):
        sdk(ops_server, "wrong").chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}])
    r = httpx.post(f"{ops_server.url}/v1/chat/completions", json={"model": "demo", "messages": []})
    assert r.status_code == 401 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    ok = sdk(ops_server).chat.completions.create(model="demo", max_tokens=3,
                                                 messages=[{"role": "user", "content": "hi"}])
    assert ok.choices[0].finish_reason in ("length", "stop")
    assert httpx.get(f"{ops_server.url}/health").status_code == 200  # open without a key


def test_body_too_large(ops_server):
    body = {"model": "demo", "messages": [{"role": "user", "content": "x" * 300_000}]}
    r = httpx.post(f"{ops_server.url}/v1/chat/completions", json=body,
                   headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_http_video_url_is_fetched(ops_server, media_dir):
    """A video served over http by an allowed host is fetched; a host not on the list is refused."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(media_dir))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        client = sdk(ops_server)
        url = f"http://127.0.0.1:{httpd.server_port}/shapes.mp4"
        r = client.chat.completions.create(model="demo", max_tokens=3, messages=video_messages(url))
        assert r.usage.prompt_tokens > 32  # the video's tokens are in the prompt
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="demo", max_tokens=3,
                                           messages=video_messages(f"http://localhost:{httpd.server_port}/shapes.mp4"))
        assert e.value.body["code"] == "media_fetch_disallowed"
    finally:
        httpd.shutdown()


def _scrape(server) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics").text  # open without a key
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if not s.name.endswith("_bucket"):
                out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def test_metrics_move_after_requests(ops_server, media_dir):
    before = _scrape(ops_server)
    client = sdk(ops_server)
    for vr in (None, {"update_every": 1}):
        client.chat.completions.create(model="demo", max_tokens=6, temperature=0,
                                       messages=video_messages(f"file://{media_dir / 'shapes.mp4'}"),
                                       extra_body={"vreason": vr} if vr else {})
    after = _scrape(ops_server)
    for name in ("vllm:request_success_total", "vllm:e2e_request_latency_seconds_count",
                 "vllm:time_to_first_token_seconds_count", "vreason:controlled_requests_total"):
        assert after[name] > before.get(name, 0.0), name
    assert after["vllm:generation_tokens_total"] >= before.get("vllm:generation_tokens_total", 0) + 2
    assert after["vreason:updates_total"] >= 1 and after["vreason:controllers_created_total"] >= 1
    assert after["vreason:inner_step_seconds_count"] >= 1
    assert "vllm:kv_cache_usage_perc" in after and "vllm:num_requests_running" in after


def test_sigterm_drains_a_running_request(ops_server):
    """Last in the module: the server is stopped by it."""
    body = {"model": "demo", "max_tokens": 1500, "ignore_eos": True, "stream": True,
            "messages": [{"role": "user", "content": "Count."}]}
    lines = []
    with httpx.stream("POST", f"{ops_server.url}/v1/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        for line in r.iter_lines():
            if line:
                lines.append(line)
            if len(lines) == 3:
                ops_server.proc.send_signal(signal.SIGTERM)
    assert lines[-1] == "data: [DONE]"
    finals = [json.loads(ln[6:])["choices"][0]["finish_reason"] for ln in lines[:-1]
              if json.loads(ln[6:])["choices"]]
    assert finals[-1] == "length"  # all 1500 tokens arrived after SIGTERM
    # uvicorn re-raises the signal after its graceful shutdown, so the exit status is -SIGTERM
    assert ops_server.proc.wait(90) in (0, -signal.SIGTERM)
    log = ops_server.log.read_text()
    assert "Application shutdown complete" in log and "Traceback" not in log
