"""create_app(): the FastAPI application around an EngineClient held on app.state."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from vreason.server import __version__
from vreason.server.controller.params import VReasonParams

from .admission import Admission
from .errors import install_error_handlers
from .metrics import Metrics
from .middleware import APIKeyAuth, BodyLimit, RequestContext
from .routes import router
from .settings import APISettings


def create_app(engine, *, vreason_default: VReasonParams | None = None, settings: APISettings | None = None,
               manage_engine: bool = True) -> FastAPI:
    """Build the app. With manage_engine, the lifespan starts and closes the engine."""
    settings = settings or APISettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if manage_engine:
            await engine.start()
        try:
            yield
        finally:
            if manage_engine:
                await engine.close()

    app = FastAPI(title="V-Reason video QA server", version=__version__, lifespan=lifespan)
    app.state.engine = engine
    app.state.vreason_default = vreason_default
    app.state.settings = settings
    app.state.admission = Admission(settings.max_queue)
    app.state.metrics = Metrics(engine.model_name, engine)
    app.state.started_at = time.time()
    install_error_handlers(app)
    app.include_router(router)
    # Added innermost first: the request id wraps everything, then CORS (so 401/413 answers to
    # browsers still carry CORS headers), then auth, then the body limit.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.api_key:
        app.add_middleware(APIKeyAuth, api_key=settings.api_key)
    if settings.allowed_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.allowed_origins), allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["x-request-id"])
    app.add_middleware(RequestContext)
    return app
