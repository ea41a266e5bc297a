"""Chat completions: validate -> engine request -> non-stream body or SSE stream.

A client that goes away (disconnect while waiting, or a closed stream) aborts its request, so
its V-Reason controller slot is freed in the worker.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from vreason.server.engine.protocol import EngineClient
from vreason.server.engine.traces import public_row, summarize
from vreason.server.engine.types import EngineClientError, EngineUnavailable, GenerateRequest, Usage

from .errors import APIError, error_body
from .schemas import ChatCompletionRequest


def _usage_dict(u: Usage) -> dict:
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens}


def check_model(engine: EngineClient, body: ChatCompletionRequest) -> None:
    if body.model != engine.model_name:
        raise APIError(404, f"model {body.model!r} does not exist; this server serves "
                       f"{engine.model_name!r}", param="model", code="model_not_found")


async def _until_disconnect(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.5)


async def complete(engine: EngineClient, request: Request, body: ChatCompletionRequest,
                   gen: GenerateRequest) -> JSONResponse:
    usage = Usage()
    texts = [""] * gen.sampling.n
    finish = [None] * gen.sampling.n
    rows: list[list[dict]] = [[] for _ in range(gen.sampling.n)]

    async def run():
        async for d in engine.generate(gen, usage):
            texts[d.index] += d.text
            finish[d.index] = d.finish_reason or finish[d.index]
            rows[d.index].extend(d.trace_rows)

    task = asyncio.ensure_future(run())
    watcher = asyncio.ensure_future(_until_disconnect(request))
    done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    if task not in done:  # the client went away: stop the work it asked for
        task.cancel()
        await engine.abort(gen.request_id)
        return JSONResponse(error_body(499, "client disconnected"), status_code=499)
    watcher.cancel()
    task.result()
    body_out = {
        "id": gen.request_id, "object": "chat.completion", "created": int(time.time()),
        "model": engine.model_name,
        "choices": [{"index": i, "message": {"role": "assistant", "content": texts[i]},
                     "finish_reason": finish[i], "logprobs": None} for i in range(gen.sampling.n)],
        "usage": _usage_dict(usage),
    }
    if gen.vreason is not None and gen.vreason.trace:
        per_choice = [summarize(r) for r in rows]
        body_out["vreason"] = per_choice[0] if gen.sampling.n == 1 else {"choices": per_choice}
    return JSONResponse(body_out)


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


async def stream(engine: EngineClient, body: ChatCompletionRequest, gen: GenerateRequest) -> StreamingResponse:
    usage = Usage()
    deltas = engine.generate(gen, usage)
    # Pull the first delta before answering 200, so that request errors (bad video, prompt
    # too long) still get a proper status code instead of an error inside the stream.
    try:
        first = await anext(deltas)
    except StopAsyncIteration:
        first = None
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    traced = gen.vreason is not None and gen.vreason.trace
    base = {"id": gen.request_id, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": engine.model_name}

    def chunk(choices: list[dict], **extra) -> str:
        return _sse({**base, "choices": choices, **extra})

    async def events() -> AsyncIterator[str]:
        rows: list[list[dict]] = [[] for _ in range(gen.sampling.n)]
        try:
            for i in range(gen.sampling.n):
                yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                              "finish_reason": None, "logprobs": None}])
            d = first
            while d is not None:
                choice = {"index": d.index, "delta": {"content": d.text} if d.text else {},
                          "finish_reason": d.finish_reason, "logprobs": None}
                if traced and d.trace_rows:
                    rows[d.index].extend(d.trace_rows)
                    choice["vreason"] = {"steps": [public_row(r) for r in d.trace_rows]}
                if traced and d.finish_reason is not None:
                    choice.setdefault("vreason", {})["summary"] = {
                        k: v for k, v in summarize(rows[d.index]).items() if k != "steps"}
                yield chunk([choice])
                d = await anext(deltas, None)
            if include_usage:
                yield chunk([], usage=_usage_dict(usage))
            yield "data: [DONE]\n\n"
        except (EngineClientError, EngineUnavailable) as e:
            status = getattr(e, "status", 503)
            yield _sse(error_body(status, getattr(e, "message", str(e)), getattr(e, "param", None),
                                  getattr(e, "code", None)))
            yield "data: [DONE]\n\n"
        finally:
            await deltas.aclose()
            await engine.abort(gen.request_id)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def new_request_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"
