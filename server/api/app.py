"""create_app(): the FastAPI application around an EngineClient held on app.state."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

from fastapi import FastAPI

from vreason.server import __version__
from vreason.server.controller.params import VReasonParams

from .errors import install_error_handlers
from .routes import router


def create_app(engine, *, vreason_default: VReasonParams | None = None, manage_engine: bool = True) -> FastAPI:
    """Build the app. With manage_engine, the lifespan starts and closes the engine."""

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
    app.state.started_at = time.time()
    install_error_handlers(app)
    app.include_router(router)
    return app
