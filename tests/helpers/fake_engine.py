"""A fake `EngineClient` for front-end tests (the HTTP layer over it, no vLLM) and its client."""

from __future__ import annotations

import asyncio

import httpx

from vreason.server.engine.types import ChoiceDelta, TraceSummary, Usage
from vreason.server.messages import StepRow, WorkerStats

BODY = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}


class FakeEngine:
    """Yields `words` as the deltas of one choice: a string is one token, a tuple of strings is
    one delta of several tokens (with per-token `token_texts`, as the real engine sends when
    vLLM hands over several tokens at once). Trace rows: one per token t, entropy t; the last
    delta of a traced request carries a summary."""

    model_name = "fake"
    max_model_len = 128

    def __init__(self, ready=True, fail: Exception | None = None, words=("Hello", " world"), delay=0.0):
        self.ready, self.fail, self.seen, self.aborted = ready, fail, [], []
        self.words, self.delay = words, delay

    def is_ready(self):
        return self.ready

    async def generate(self, request, usage: Usage):
        self.seen.append(request)
        if self.fail:
            raise self.fail
        usage.prompt_tokens = 5
        n = 0
        for i, word in enumerate(self.words, start=1):
            if self.delay:
                await asyncio.sleep(self.delay)
            pieces = (word,) if isinstance(word, str) else tuple(word)
            first, n = n + 1, n + len(pieces)
            usage.completion_tokens = n
            rows = [StepRow(t, 1.0 * t, 0.1 * t, 1.0, t == 2) for t in range(first, n + 1)]
            last = i == len(self.words)
            traced = bool(request.vreason and request.vreason.trace)
            summary = TraceSummary(1, 0, 2, True, positions=4) if traced and last else None
            yield ChoiceDelta(0, "".join(pieces), n, "stop" if last else None, trace_rows=rows if traced else [],
                              trace_summary=summary, token_texts=pieces if len(pieces) > 1 else None)

    async def abort(self, request_id):
        self.aborted.append(request_id)

    async def stats(self):
        return {"active_slots": 0}

    async def metrics_snapshot(self):
        return {"num_running": 1, "num_waiting": 2, "kv_cache_usage": 0.25,
                "vreason": WorkerStats(active_slots=1, controller_bytes=4096,
                                       totals={"updates": 3, "skipped_updates": 1, "created": 2},
                                       step_seconds=[0.001, 0.002])}


def client_for(engine, **settings) -> httpx.AsyncClient:
    """An httpx client on the ASGI app over `engine`, with APISettings(**settings)."""
    from vreason.server.api.app import create_app
    from vreason.server.api.settings import APISettings

    app = create_app(engine, manage_engine=False, settings=APISettings(**settings))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
