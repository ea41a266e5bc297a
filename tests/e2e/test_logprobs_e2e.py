"""Logprobs of controlled requests come from the logits that were actually sampled.

vLLM computes logprobs from the logits handed to its sampler, and the V-Reason runner replaces a
controlled request's logits before sampling. So, greedy: before the first update the controlled
request's logprobs equal the plain request's; from the first update on (apply "now") they are
the controller's, and the greedy token is always the argmax of the logprobs returned with it.
"""

from __future__ import annotations

import httpx
import pytest

from tests.helpers.messages import video_messages

pytestmark = pytest.mark.slow
UPDATE_EVERY = 3
# Same engine, same float32 kernels, one request at a time: far below this.
TOL = 1e-4


def _ask(server, url, vreason):
    r = httpx.post(f"{server.url}/v1/chat/completions", timeout=120, json={
        "model": server.model, "messages": video_messages(url), "temperature": 0, "max_tokens": 8,
        "logprobs": True, "top_logprobs": 5, "vreason": vreason})
    assert r.status_code == 200, r.text
    return r.json()


def test_controlled_logprobs_are_the_sampled_ones(server, media_dir):
    url = f"file://{media_dir / 'shapes.mp4'}"
    plain = _ask(server, url, False)["choices"][0]["logprobs"]["content"]
    out = _ask(server, url, {"trace": True, "update_every": UPDATE_EVERY, "lr": 0.5})
    ctrl = out["choices"][0]["logprobs"]["content"]
    steps = out["vreason"]["steps"]
    first = next(i for i, s in enumerate(steps) if s["updated"])
    assert first == UPDATE_EVERY - 1
    for i in range(first):  # no update yet: the plain model's logits
        assert ctrl[i]["token"] == plain[i]["token"]
        assert abs(ctrl[i]["logprob"] - plain[i]["logprob"]) <= TOL
    # From the first update on the distribution is the controller's, not the plain model's.
    def dist(t):
        return {a["token"]: a["logprob"] for a in t["top_logprobs"]}
    moved = [i for i in range(first, len(ctrl))
             if ctrl[i]["token"] != plain[i]["token"]
             or any(abs(v - dist(plain[i]).get(k, v + 1)) > 1e-3 for k, v in dist(ctrl[i]).items())]
    assert first in moved, (ctrl[first], plain[first])
    for t in ctrl:  # greedy sampled the argmax of exactly these logprobs
        assert t["logprob"] >= max(a["logprob"] for a in t["top_logprobs"]) - TOL
