"""Load and faults on dedicated servers: bounded mixed load with admission control, disconnects
that free V-Reason slots, and a killed engine core that turns /health and requests into 503.

The load server runs ``--max-num-seqs 4 --max-queue 8``: at most 8 chat requests admitted at
once, so 16 concurrent clients must see clean 429s rather than hangs. The engine-death test
gets its own server, since it leaves that one dead.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
import psutil
import pytest

from tests.helpers.openai_errors import assert_openai_error
from tests.helpers.servers import start_server, stop_server
from vreason.clients.synth_video import mp4_data_url

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
REQUESTS, CONCURRENCY, MAX_QUEUE, MAX_SEQS = 64, 16, 8, 4
CLIENT_TIMEOUT = 120.0
ATTEMPTS = 5  # like the OpenAI SDK, retry a 429 after Retry-After (a few times)


@pytest.fixture(scope="module")
def load_server(demo_model, media_dir, tmp_path_factory):
    s = start_server(demo_model, media_dir, tmp_path_factory.mktemp("load") / "server.log",
                     "--max-num-seqs", str(MAX_SEQS), "--max-queue", str(MAX_QUEUE))
    yield s
    stop_server(s)


@pytest.fixture(scope="module")
def video_url() -> str:
    return mp4_data_url(num_frames=8, size=(56, 56))


def body(video: str, i: int, **over) -> dict:
    b = {"model": "demo", "max_tokens": 4 + i % 13, "temperature": 0.7, "seed": i,
         "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": video}},
                                                   {"type": "text", "text": f"Question {i}: what moves?"}]}]}
    if i % 4 == 0:
        b["vreason"] = {"enabled": True}
    if i % 3 == 0:
        b.update(stream=True, stream_options={"include_usage": True})
    b.update(over)
    return b


async def _attempt(http: httpx.AsyncClient, b: dict) -> httpx.Response:
    async with http.stream("POST", "/v1/chat/completions", json=b) as r:
        raw = await r.aread()
    if r.status_code == 200:
        if b.get("stream"):
            events = [e for e in raw.decode().split("\n\n") if e.strip()]
            assert events[-1] == "data: [DONE]", events[-3:]
            assert not any(e.startswith('data: {"error"') for e in events), events[-3:]
        else:
            out = json.loads(raw)
            assert out["object"] == "chat.completion" and out["choices"][0]["finish_reason"] in ("length", "stop")
    else:
        err = assert_openai_error(httpx.Response(r.status_code, headers=r.headers, content=raw), (429, 503))
        if r.status_code == 429:
            assert err["type"] == "rate_limit_error" and err["code"] == "queue_full", err
            assert float(r.headers["retry-after"]) >= 0
    return httpx.Response(r.status_code, headers=r.headers)


async def _request(http: httpx.AsyncClient, b: dict) -> dict:
    """One logical request as an SDK makes it: 429s are retried after Retry-After (at most
    ATTEMPTS tries), 503 is final. Returns its outcome and timings."""
    t0 = time.perf_counter()
    for attempt in range(1, ATTEMPTS + 1):
        ta = time.perf_counter()
        r = await _attempt(http, b)
        if r.status_code != 429 or attempt == ATTEMPTS:
            break
        await asyncio.sleep(min(float(r.headers["retry-after"]), 2.0))
    now = time.perf_counter()
    return {"status": r.status_code, "attempts": attempt, "total_s": now - t0, "last_attempt_s": now - ta}


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))], 3)


def test_bounded_mixed_load(load_server, video_url, tmp_path):
    async def main():
        sem = asyncio.Semaphore(CONCURRENCY)
        async with httpx.AsyncClient(base_url=load_server.url, timeout=CLIENT_TIMEOUT,
                                     limits=httpx.Limits(max_connections=CONCURRENCY * 2)) as http:
            async def guarded(i):
                async with sem:
                    return await _request(http, body(video_url, i))
            t0 = time.perf_counter()
            results = await asyncio.wait_for(asyncio.gather(*(guarded(i) for i in range(REQUESTS))), 300)
            return results, time.perf_counter() - t0

    results, wall = asyncio.run(main())
    ok = [x for x in results if x["status"] == 200]
    figures = {
        "requests": REQUESTS, "concurrency": CONCURRENCY, "max_queue": MAX_QUEUE, "max_num_seqs": MAX_SEQS,
        "vreason_requests": sum(1 for i in range(REQUESTS) if i % 4 == 0),
        "streaming_requests": sum(1 for i in range(REQUESTS) if i % 3 == 0),
        "answered": len(ok), "rejected": len(results) - len(ok),
        "final_status": {str(s): sum(1 for x in results if x["status"] == s) for s in (200, 429, 503)},
        "answered_first_try": sum(1 for x in ok if x["attempts"] == 1),
        "responses_429": sum(x["attempts"] - 1 + (x["status"] == 429) for x in results),
        "latency_s": {"p50": _pct([x["total_s"] for x in ok], 50), "p99": _pct([x["total_s"] for x in ok], 99)},
        "latency_admitted_attempt_s": {"p50": _pct([x["last_attempt_s"] for x in ok], 50),
                                       "p99": _pct([x["last_attempt_s"] for x in ok], 99)},
        "wall_s": round(wall, 2)}
    (tmp_path / "load.json").write_text(json.dumps(figures, indent=2))
    print(f"\nload figures ({tmp_path / 'load.json'}): {json.dumps(figures)}")
    assert figures["answered"] + figures["rejected"] == REQUESTS  # answered or cleanly rejected, none lost
    assert figures["answered"] >= REQUESTS // 2, figures  # admission lets work through, it does not just refuse
    assert httpx.get(f"{load_server.url}/health", timeout=10).status_code == 200
    assert load_server.wait_idle(20)["active_slots"] == 0


def _engine_requests(metrics: str) -> float:
    """Requests in vLLM's engine (running + waiting), from /metrics."""
    return sum(float(line.split()[-1]) for line in metrics.splitlines()
               if line.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting")))


def test_queue_full_then_disconnects_free_slots(load_server, video_url):
    """Hold MAX_QUEUE long V-Reason streams (MAX_SEQS running, the rest waiting): one more
    request gets 429; closing the streams frees every controller slot and the queue."""

    async def hold(http, i, started: asyncio.Event):
        b = body(video_url, i, max_tokens=3000, ignore_eos=True, stream=True, vreason={"enabled": True})
        async with http.stream("POST", "/v1/chat/completions", json=b) as r:
            assert r.status_code == 200, await r.aread()
            async for _ in r.aiter_lines():
                started.set()
                await asyncio.sleep(0.05)  # a slow reader, never finishing on its own

    async def main():
        async with httpx.AsyncClient(base_url=load_server.url, timeout=CLIENT_TIMEOUT,
                                     limits=httpx.Limits(max_connections=32)) as http:
            events = [asyncio.Event() for _ in range(MAX_QUEUE)]
            tasks = [asyncio.create_task(hold(http, i, e)) for i, e in enumerate(events)]
            try:
                deadline = time.monotonic() + 60
                while sum(e.is_set() for e in events) < MAX_SEQS and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                assert sum(e.is_set() for e in events) >= MAX_SEQS, "streams did not start"
                # every hold is in the engine (running or waiting) before the extra request; a hold
                # that failed is named rather than leaving a free place that the extra one takes
                while time.monotonic() < deadline:
                    metrics = (await http.get("/metrics")).text
                    if _engine_requests(metrics) >= MAX_QUEUE or any(t.done() for t in tasks):
                        break
                    await asyncio.sleep(0.1)
                failed = [t.exception() for t in tasks if t.done() and not t.cancelled()]
                assert not failed and _engine_requests(metrics) >= MAX_QUEUE, (failed, metrics[-2000:])
                slots = (await http.get("/vreason/stats")).json()["active_slots"]
                extra = await http.post("/v1/chat/completions", json=body(video_url, 1, max_tokens=2))
            finally:
                for t in tasks:
                    t.cancel()  # closes each connection mid-stream
                await asyncio.gather(*tasks, return_exceptions=True)
            return slots, extra

    deadline = time.monotonic() + 60  # the previous test's disconnected streams have left the engine
    while _engine_requests(httpx.get(f"{load_server.url}/metrics", timeout=30).text) and time.monotonic() < deadline:
        time.sleep(0.2)
    load_server.wait_idle(60)
    slots, extra = asyncio.run(main())
    assert slots >= 1, "V-Reason streams held no controller slot"
    err = assert_openai_error(extra, 429)
    assert err["code"] == "queue_full" and extra.headers.get("retry-after")
    t0 = time.monotonic()
    stats = load_server.wait_idle(10)
    assert stats["active_slots"] == 0, f"slots not freed {time.monotonic() - t0:.1f}s after disconnect: {stats}"
    # The admission counter went back down too: a new request is admitted and answered.
    r = httpx.post(f"{load_server.url}/v1/chat/completions", json=body(video_url, 2, max_tokens=2), timeout=60)
    assert r.status_code == 200, r.text[:300]


@pytest.fixture(scope="module")
def doomed_server(demo_model, media_dir, tmp_path_factory):
    s = start_server(demo_model, media_dir, tmp_path_factory.mktemp("doomed") / "server.log")
    yield s
    stop_server(s)


def _engine_cores(pid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.Process(pid).children(recursive=True):
        try:
            if "EngineCore" in p.name() or "EngineCore" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            pass
    return out


def test_engine_death_turns_into_503(doomed_server, video_url):
    """Last in this module: leaves its own server dead."""
    url = doomed_server.url
    cores = _engine_cores(doomed_server.proc.pid)
    assert cores, "no EngineCore child process found"

    async def main():
        async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(30.0)) as http:
            b = body(video_url, 0, max_tokens=3000, ignore_eos=True, stream=True)
            async with http.stream("POST", "/v1/chat/completions", json=b) as r:
                assert r.status_code == 200
                lines = r.aiter_lines()
                await anext(lines)  # generation under way
                for p in cores:
                    p.send_signal(signal.SIGKILL)
                t0 = time.monotonic()
                tail = [ln async for ln in lines]  # must end (error chunk / close), not hang
                return time.monotonic() - t0, tail

    try:
        ended_after, tail = asyncio.run(asyncio.wait_for(main(), 60))
    except (httpx.RemoteProtocolError, httpx.ReadError):
        ended_after, tail = 0.0, None  # connection dropped: also ends the stream
    print(f"\nengine killed: in-flight stream ended after {ended_after:.2f}s, last lines {tail and tail[-4:]}")
    assert ended_after < 30
    if tail is not None:  # a stream that ends in words must say it failed, not look complete
        assert any(ln.startswith('data: {"error"') for ln in tail), tail[-4:]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/health", timeout=5).status_code == 503:
            break
        time.sleep(0.5)
    health = httpx.get(f"{url}/health", timeout=5)
    assert_openai_error(health, 503)
    t0 = time.monotonic()
    r = httpx.post(f"{url}/v1/chat/completions", timeout=30,
                   json={"model": "demo", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
    assert time.monotonic() - t0 < 30
    assert_openai_error(r, 503)
