"""The test-only vreason knobs are unknown options to clients unless the server enables them."""

from __future__ import annotations

import httpx
import pytest

from vreason.server.api.app import create_app
from vreason.server.api.settings import APISettings
from vreason.server.engine.types import ChoiceDelta

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


class Engine:
    model_name, max_model_len = "fake", 4096

    def __init__(self):
        self.seen = []

    def is_ready(self):
        return True

    async def generate(self, request, usage):
        self.seen.append(request.vreason)
        yield ChoiceDelta(0, "ok", 1, "stop")

    async def abort(self, request_id):
        pass


@pytest.mark.parametrize("knob", [{"force_alpha": 1}, {"nan_at_step": 2}, {"fail_at_step": 2}])
@pytest.mark.parametrize("enabled", [False, True])
async def test_knobs_only_with_the_flag(knob, enabled):
    engine = Engine()
    app = create_app(engine, manage_engine=False, settings=APISettings(test_knobs=enabled))
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "vreason": knob}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.post("/v1/chat/completions", json=body)
    (name, value), = knob.items()
    if enabled:
        assert r.status_code == 200 and getattr(engine.seen[0], name) == value
    else:
        assert r.status_code == 400 and engine.seen == []
        err = r.json()["error"]
        assert err["param"] == f"vreason.{name}" and "unknown vreason option" in err["message"]
