"""One V-Reason request never takes the engine down: an injected controller failure (the
test-only knob fail_at_step, which raises inside the batched update as an out-of-memory error
would) fails that request alone, and every other request keeps the tokens it has solo."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytestmark = pytest.mark.slow

KNOBS = [None, {"lr": 0.3, "update_every": 1}, {"update_every": 2, "steps": 2}]
FAILING = {"update_every": 2, "fail_at_step": 4}


def _body(server, url, vreason, max_tokens=16, **kw):
    body = {"model": server.model, "temperature": 0, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                                      {"type": "text", "text": "What moves in this video?"}]}],
            **kw}
    if vreason is not None:
        body["vreason"] = vreason
    return body


def _post(server, url, vreason, **kw):
    return httpx.post(f"{server.url}/v1/chat/completions", json=_body(server, url, vreason, **kw), timeout=120)


@pytest.fixture
def url(media_dir):
    return f"file://{media_dir / 'shapes.mp4'}"


def test_injected_failure_fails_one_of_six_alone(server, url):
    solo = [_post(server, url, k).json()["choices"][0]["message"]["content"] for k in KNOBS]
    before = server.wait_idle()["totals"].get("failed", 0)
    jobs = [KNOBS[0], KNOBS[1], FAILING, KNOBS[2], KNOBS[1], KNOBS[0]]
    with ThreadPoolExecutor(6) as ex:
        out = list(ex.map(lambda k: _post(server, url, k), jobs))
    failed = out.pop(2)
    assert failed.status_code == 500, failed.text
    err = failed.json()["error"]
    assert err["code"] == "vreason_failed" and "fail_at_step" in err["message"] and "at step 4" in err["message"]
    assert [r.status_code for r in out] == [200] * 5
    assert [r.json()["choices"][0]["message"]["content"] for r in out] == [solo[0], solo[1], solo[2], solo[1], solo[0]]
    assert httpx.get(f"{server.url}/health").status_code == 200
    stats = server.wait_idle()
    assert stats["totals"]["failed"] == before + 1 and stats["active_slots"] == 0
    assert stats["slab_free_slots"] == stats["slab_slots"]  # the failed request's slot came back
    again = _post(server, url, KNOBS[1])
    assert again.status_code == 200 and again.json()["choices"][0]["message"]["content"] == solo[1]


def test_injected_failure_in_a_stream_ends_it_with_an_error(server, url):
    body = _body(server, url, FAILING, stream=True)
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200  # the failure comes after the first token
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    errors = [e["error"] for e in events if "error" in e]
    assert len(errors) == 1 and errors[0]["code"] == "vreason_failed"
    assert not any(c.get("finish_reason") for e in events for c in e.get("choices", []))  # never a normal end
    assert _post(server, url, None).status_code == 200


def test_fail_at_step_is_checked(server, url):
    """The session server runs with --enable-test-knobs; the knob itself is still validated."""
    r = _post(server, url, {"update_every": 2, "fail_at_step": 3})
    assert r.status_code == 400 and r.json()["error"]["param"] == "vreason.fail_at_step"
