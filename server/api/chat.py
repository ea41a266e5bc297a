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
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from vreason.server.engine.protocol import EngineClient
from vreason.server.engine.traces import public_row, trace_object
from vreason.server.engine.types import (ChoiceDelta, EngineUnavailable, GenerateRequest, PromptLogprob,
                                         TokenLogprob, TraceSummary, Usage)
from vreason.server.errors import ClientError
from vreason.server.messages import StepRow

from .errors import error_body, error_fields, error_response
from .metrics import Metrics
from .reasoning import ReasoningSplitter
from .schemas import (REFUSED_FIELDS, REFUSED_MESSAGE_FIELDS, STRUCTURED_CONSTRAINTS, TOOL_ROLES,
                      TOOLS_REFUSAL, BatchChatCompletionRequest, ChatCompletionRequest)


@dataclass
class Choice:
    """One choice's output so far: answer and reasoning text, trace rows, token counts."""

    split: bool
    splitter: ReasoningSplitter = field(default_factory=ReasoningSplitter)
    content: str = ""
    reasoning: str = ""
    reasoning_tokens: int = 0
    tokens: int = 0
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    rows: list[StepRow] = field(default_factory=list)
    summary: TraceSummary | None = None
    logprobs: list[TokenLogprob] | None = None
    token_ids: list[int] = field(default_factory=list)
    role: str = "assistant"

    def start(self, body: ChatCompletionRequest) -> tuple[str, str]:
        """Begin with the prompt's side of the answer: `echo` puts the last message's text first
        (returned as (reasoning, content), split like the answer), and a continued message
        (continue_final_message) sets the split's state, so that a prefilled "<think>..." goes on
        as reasoning. Neither counts as generated tokens."""
        self.role = body.response_role()
        echoed = body.echoed_text()
        if not self.split:
            self.content += echoed
            return "", echoed
        r, c = self.splitter.feed(echoed or body.continued_text())
        if not echoed:
            return "", ""
        self.reasoning += r
        self.content += c
        return r, c

    def add(self, d: ChoiceDelta) -> tuple[str, str]:
        """Take a delta; returns the (reasoning, content) text it adds."""
        self.token_ids.extend(d.token_ids)
        new_tokens, self.tokens = d.num_tokens - self.tokens, d.num_tokens
        self.finish_reason = d.finish_reason or self.finish_reason
        self.stop_reason = d.stop_reason if d.stop_reason is not None else self.stop_reason
        self.rows.extend(d.trace_rows)
        self.summary = d.trace_summary or self.summary
        if d.logprobs is not None:
            self.logprobs = (self.logprobs or []) + d.logprobs
        if not self.split:
            self.content += d.text
            return "", d.text
        # Split token by token, so that a delta of several tokens that holds the end (or the
        # start) of the thought counts only its tokens inside it. Without per-token texts (or
        # when they do not add up to the text) the delta is one piece: exact for one token.
        pieces = d.token_texts if d.token_texts and "".join(d.token_texts) == d.text else None
        weighted = [(p, 1) for p in pieces] if pieces else [(d.text, new_tokens)]
        rs, cs = [], []
        for piece, tokens in weighted:
            was_inside = self.splitter.inside
            r, c = self.splitter.feed(piece)
            if was_inside or self.splitter.inside or r:  # opening, inside or closing the thought
                self.reasoning_tokens += tokens
            rs.append(r)
            cs.append(c)
        if d.finish_reason is not None:
            r, c = self.splitter.finish()
            rs.append(r)
            cs.append(c)
        r, c = "".join(rs), "".join(cs)
        self.reasoning += r
        self.content += c
        return r, c

    def message(self) -> dict:
        msg = {"role": self.role, "content": self.content}
        if self.split and self.splitter.saw_reasoning:
            msg["reasoning"] = msg["reasoning_content"] = self.reasoning
        return msg


class RequestObserver:
    """Feeds one request's timing and token counts into the metrics."""

    def __init__(self, metrics: Metrics | None, vreason: bool):
        self.m, self.t0 = metrics, time.perf_counter()
        self.last: float | None = None
        self.tokens = 0
        if self.m is not None and vreason:
            self.m.controlled.labels(self.m.model).inc()

    def tokens_seen(self, total: int) -> None:
        if self.m is None or total <= self.tokens:
            return
        now = time.perf_counter()
        if self.last is None:
            self.m.ttft.labels(self.m.model).observe(now - self.t0)
        else:
            gap = (now - self.last) / (total - self.tokens)
            for _ in range(total - self.tokens):
                self.m.itl.labels(self.m.model).observe(gap)
        self.last, self.tokens = now, total

    def finished(self, usage: Usage, reasons: list[str | None]) -> None:
        if self.m is None:
            return
        self.m.e2e.labels(self.m.model).observe(time.perf_counter() - self.t0)
        self.m.prompt_tokens.labels(self.m.model).inc(usage.prompt_tokens)
        self.m.generation_tokens.labels(self.m.model).inc(usage.completion_tokens)
        for r in reasons:
            self.m.success.labels(self.m.model, r or "abort").inc()


def logprobs_object(tokens: list[TokenLogprob] | None) -> dict | None:
    """OpenAI's choice.logprobs: {"content": [{token, logprob, bytes, top_logprobs}]}."""
    if tokens is None:
        return None

    def one(t: TokenLogprob) -> dict:
        return {"token": t.token, "logprob": t.logprob, "bytes": None if t.bytes is None else list(t.bytes)}
    return {"content": [{**one(t), "top_logprobs": [one(a) for a in t.top]} for t in tokens]}


def prompt_logprobs_object(positions: list[dict[int, PromptLogprob] | None]) -> list[dict | None]:
    """vLLM's top-level prompt_logprobs: per prompt position (None for the first), the logprobs
    keyed by token id: {"<id>": {"logprob", "rank", "decoded_token"}}."""
    return [None if pos is None else {str(tid): {"logprob": lp.logprob, "rank": lp.rank, "decoded_token":
                                                 lp.decoded_token} for tid, lp in pos.items()}
            for pos in positions]


def videos_object(usage: Usage) -> list[dict]:
    """What each video was sampled to; `capped` says the server's frame cap cut the request."""
    return [{"frames_used": v.frames, "frames_requested": v.requested, "capped": v.capped,
             **({"param": v.param} if v.param else {}),
             **({"tokens_kept": v.lite_tokens[0], "tokens_pruned": v.lite_tokens[1] - v.lite_tokens[0]}
                if v.lite_tokens else {})} for v in usage.videos]


def _usage_dict(u: Usage, choices: list[Choice]) -> dict:
    out = {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
           "total_tokens": u.total_tokens}
    if any(c.split for c in choices):
        out["completion_tokens_details"] = {"reasoning_tokens": sum(c.reasoning_tokens for c in choices)}
    return out


def check_request(engine: EngineClient, body: ChatCompletionRequest) -> None:
    """Checks of field combinations and of the server's state (served model, context length),
    and the refusals, each with its reason (schemas.REFUSED_FIELDS, REFUSED_MESSAGE_FIELDS)."""
    if body.model and body.model != engine.model_name:  # omitted or "": the served model, as on vllm serve
        raise ClientError(f"model {body.model!r} does not exist; this server serves {engine.model_name!r}",
                          param="model", code="model_not_found", status=404)
    if body.stream_options is not None and not body.stream:
        raise ClientError("stream_options is only allowed when stream is true", param="stream_options")
    if body.tools is not None:
        raise ClientError(f"{TOOLS_REFUSAL}: send the request without tools", param="tools",
                          code="tools_not_supported")
    if body.tool_choice not in (None, "none"):
        raise ClientError(f"{TOOLS_REFUSAL}: tool_choice may only be \"none\"", param="tool_choice",
                          code="tools_not_supported")
    for name, (code, why) in REFUSED_FIELDS.items():
        if getattr(body, name):
            raise ClientError(why, param=name, code=code)
    for i, m in enumerate(body.messages):
        if m.role in TOOL_ROLES:
            raise ClientError(f"{TOOLS_REFUSAL}: no {m.role!r} messages", param=f"messages.{i}.role",
                              code="tools_not_supported")
        for name, (code, why) in REFUSED_MESSAGE_FIELDS.items():
            if getattr(m, name) is not None:
                raise ClientError(why, param=f"messages.{i}.{name}", code=code)
    if body.continue_final_message and body.add_generation_prompt:  # vllm serve's template refuses it too
        raise ClientError("continue_final_message needs add_generation_prompt: false (its default is true): "
                          "continuing the final message means not starting a new one",
                          param="continue_final_message")
    if body.structured_outputs is not None:
        found = body.structured_outputs.constraints()
        if body.response_format is not None and body.response_format.type != "text":
            found.append("response_format")
        if len(found) != 1:
            raise ClientError(f"structured_outputs needs exactly one constraint of "
                              f"{', '.join(STRUCTURED_CONSTRAINTS)} (or a response_format), got "
                              f"{', '.join(found) or 'none'}", param="structured_outputs")
    if body.top_logprobs and not body.logprobs:
        raise ClientError("top_logprobs needs logprobs: true", param="top_logprobs")
    for name in ("max_tokens", "max_completion_tokens"):
        value = getattr(body, name)
        if value is not None and value > engine.max_model_len:
            raise ClientError(f"{name}={value} cannot fit: this model's maximum context length is "
                              f"{engine.max_model_len} tokens (prompt plus output)", param=name)


# Refused in a batch request unless at the value given (vLLM's batch endpoint refuses these or
# has no place for them): field -> (allowed value, why).
BATCH_REFUSED = {
    "stream": (False, "batch chat completions do not stream: send stream: false, or one streamed request per "
                      "conversation"),
    "n": (1, "batch chat completions answer one choice per conversation: n must be 1"),
    "prompt_logprobs": (None, "a batch answer has no place for each conversation's prompt logprobs: send one "
                              "request per conversation"),
}


def check_batch(engine: EngineClient, body: BatchChatCompletionRequest) -> list[ChatCompletionRequest]:
    """The batch's conversations as chat requests, each checked like one (check_request), with
    `param` naming the conversation (messages.<i>...)."""
    for name, (allowed, why) in BATCH_REFUSED.items():
        if getattr(body, name) != allowed:
            raise ClientError(why, param=name)
    conversations = body.conversations()
    for i, conv in enumerate(conversations):
        try:
            check_request(engine, conv)
        except ClientError as e:
            if e.param and e.param.startswith("messages."):
                e.param = f"messages.{i}.{e.param.removeprefix('messages.')}"
            raise
    return conversations


async def _until_disconnect(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.5)


def _trace_object(gen: GenerateRequest, choices: list[Choice]) -> dict:
    per_choice = [trace_object(c.rows, c.summary) for c in choices]
    return per_choice[0] if gen.sampling.n == 1 else {"choices": per_choice}


def _new_choices(body: ChatCompletionRequest, gen: GenerateRequest,
                 split: bool) -> tuple[list[Choice], tuple[str, str]]:
    """The request's choices, started (Choice.start), and the (reasoning, content) each starts with."""
    choices = [Choice(split) for _ in range(gen.sampling.n)]
    starts = [c.start(body) for c in choices]
    return choices, starts[0]


def _prompt_fields(body: ChatCompletionRequest, usage: Usage) -> dict:
    """Top-level prompt_logprobs and prompt_token_ids, when the request asked for them."""
    out = {}
    if usage.prompt_logprobs is not None:
        out["prompt_logprobs"] = prompt_logprobs_object(usage.prompt_logprobs)
    if body.return_token_ids:
        out["prompt_token_ids"] = list(usage.prompt_token_ids)
    return out


async def _run(engine: EngineClient, request: Request, gen: GenerateRequest, choices: list[Choice],
               usage: Usage, *, timeout: float, metrics: Metrics | None) -> bool:
    """Run one engine request to its end into `choices` and `usage`; False: the client went away
    (the request is aborted then, and on a timeout, which raises)."""
    obs = RequestObserver(metrics, gen.vreason is not None)

    async def run():
        async for d in engine.generate(gen, usage):
            choices[d.index].add(d)
            obs.tokens_seen(usage.completion_tokens)

    task = asyncio.ensure_future(run())
    watcher = asyncio.ensure_future(_until_disconnect(request))
    done, _ = await asyncio.wait({task, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    watcher.cancel()
    if task not in done:  # the client went away, or the request ran out of time: stop its work
        task.cancel()
        await engine.abort(gen.request_id)
        obs.finished(usage, [None] * len(choices))
        if watcher in done:
            return False
        raise ClientError(f"request did not finish within {timeout:g} s", code="request_timeout", status=504)
    task.result()
    obs.finished(usage, [c.finish_reason for c in choices])
    return True


def _choice_object(index: int, c: Choice, body: ChatCompletionRequest) -> dict:
    return {"index": index, "message": c.message(), "logprobs": logprobs_object(c.logprobs),
            "finish_reason": c.finish_reason, "stop_reason": c.stop_reason,
            **({"token_ids": c.token_ids} if body.return_token_ids else {})}


async def complete(engine: EngineClient, request: Request, body: ChatCompletionRequest,
                   gen: GenerateRequest, *, timeout: float, split: bool,
                   metrics: Metrics | None) -> JSONResponse:
    usage = Usage()
    choices, _ = _new_choices(body, gen, split)
    if not await _run(engine, request, gen, choices, usage, timeout=timeout, metrics=metrics):
        return error_response(499, "client disconnected")
    body_out = {
        "id": gen.request_id, "object": "chat.completion", "created": int(time.time()),
        "model": engine.model_name,
        "choices": [_choice_object(i, c, body) for i, c in enumerate(choices)],
        "usage": _usage_dict(usage, choices),
        **_prompt_fields(body, usage),
    }
    if usage.videos:
        body_out["videos"] = videos_object(usage)
    if gen.vreason is not None and gen.vreason.trace:
        body_out["vreason"] = _trace_object(gen, choices)
    return JSONResponse(body_out)


async def complete_batch(engine: EngineClient, request: Request, body: BatchChatCompletionRequest,
                         conversations: list[ChatCompletionRequest], gens: list[GenerateRequest], *,
                         timeout: float, split: bool, metrics: Metrics | None) -> JSONResponse:
    """vLLM's batch chat completion: the conversations run as concurrent engine requests; the
    answer has choice i for conversation i, the usage summed, and with a V-Reason trace one
    trace per conversation. A failure of one fails the batch (the others are aborted)."""
    usages = [Usage() for _ in gens]
    choices = [_new_choices(conv, gen, split)[0] for conv, gen in zip(conversations, gens)]
    runs = [asyncio.ensure_future(_run(engine, request, gen, cs, u, timeout=timeout, metrics=metrics))
            for gen, cs, u in zip(gens, choices, usages)]
    try:
        finished = await asyncio.gather(*runs)
    except BaseException:
        for r in runs:
            r.cancel()
        for gen in gens:
            await engine.abort(gen.request_id)
        raise
    if not all(finished):
        return error_response(499, "client disconnected")
    firsts = [cs[0] for cs in choices]
    total = Usage(sum(u.prompt_tokens for u in usages), sum(u.completion_tokens for u in usages),
                  [v for u in usages for v in u.videos])
    body_out = {"id": new_request_id(), "object": "chat.completion", "created": int(time.time()),
                "model": engine.model_name,
                "choices": [_choice_object(i, c, body) for i, c in enumerate(firsts)],
                "usage": _usage_dict(total, firsts)}
    if total.videos:
        body_out["videos"] = videos_object(total)
    if gens[0].vreason is not None and gens[0].vreason.trace:
        body_out["vreason"] = {"choices": [trace_object(c.rows, c.summary) for c in firsts]}
    return JSONResponse(body_out)


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


async def stream(engine: EngineClient, body: ChatCompletionRequest, gen: GenerateRequest, *, timeout: float,
                 split: bool, metrics: Metrics | None, on_done) -> StreamingResponse:
    usage = Usage()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    obs = RequestObserver(metrics, gen.vreason is not None)
    deltas = engine.generate(gen, usage)
    # Pull the first delta before answering 200, so that request errors (bad video, prompt
    # too long) still get a proper status code instead of an error inside the stream.
    try:
        first = await anext(deltas)
    except StopAsyncIteration:
        first = None
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    # vLLM's continuous_usage_stats: usage on every chunk (only together with include_usage).
    every_chunk_usage = include_usage and body.stream_options.continuous_usage_stats
    traced = gen.vreason is not None and gen.vreason.trace
    choices, (echo_reasoning, echo_content) = _new_choices(body, gen, split)
    base = {"id": gen.request_id, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": engine.model_name}

    def chunk(items: list[dict], **extra) -> str:
        if every_chunk_usage and "usage" not in extra:
            extra["usage"] = _usage_dict(usage, choices)
        return _sse({**base, "choices": items, **extra})

    def delta_chunk(d: ChoiceDelta) -> str:
        c = choices[d.index]
        reasoning, content = c.add(d)
        delta = {}
        if reasoning:
            delta["reasoning"] = delta["reasoning_content"] = reasoning
        if content:
            delta["content"] = content
        item = {"index": d.index, "delta": delta, "logprobs": logprobs_object(d.logprobs),
                "finish_reason": d.finish_reason}
        if body.return_token_ids:
            item["token_ids"] = list(d.token_ids)
        if d.finish_reason is not None:
            item["stop_reason"] = d.stop_reason
        if traced and d.trace_rows:
            item["vreason"] = {"steps": [public_row(r) for r in d.trace_rows]}
        if traced and d.finish_reason is not None:
            item.setdefault("vreason", {})["summary"] = trace_object(c.rows, c.summary, steps=False)
        return chunk([item])

    async def events() -> AsyncIterator[str]:
        try:
            first_extra = {"videos": videos_object(usage)} if usage.videos else {}
            if every_chunk_usage:  # the role chunks come before any token, as on vLLM
                first_extra["usage"] = _usage_dict(Usage(usage.prompt_tokens), choices)
            if body.return_token_ids:  # on every role chunk, as on vLLM
                first_extra["prompt_token_ids"] = list(usage.prompt_token_ids)
            for i in range(gen.sampling.n):
                yield chunk([{"index": i, "delta": {"role": choices[i].role, "content": ""},
                              "logprobs": None, "finish_reason": None}], **first_extra)
            if echo_reasoning or echo_content:  # echo: the last message's text, before any token
                echoed = {"reasoning": echo_reasoning, "reasoning_content": echo_reasoning, "content": echo_content}
                echoed = {k: v for k, v in echoed.items() if v}
                for i in range(gen.sampling.n):
                    yield chunk([{"index": i, "delta": echoed, "logprobs": None, "finish_reason": None}],
                                **({"usage": first_extra["usage"]} if every_chunk_usage else {}))
            d = first
            while d is not None:
                obs.tokens_seen(usage.completion_tokens)
                yield delta_chunk(d)
                try:
                    d = await asyncio.wait_for(anext(deltas, None), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    yield _sse(error_body(504, f"request did not finish within {timeout:g} s", None,
                                          "request_timeout"))
                    break
            if include_usage:
                yield chunk([], usage=_usage_dict(usage, choices))
            yield "data: [DONE]\n\n"
        except (ClientError, EngineUnavailable) as e:
            yield _sse(error_body(*error_fields(e)))
            yield "data: [DONE]\n\n"
        finally:
            obs.finished(usage, [c.finish_reason for c in choices])
            on_done()
            await deltas.aclose()
            await engine.abort(gen.request_id)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def new_request_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"
