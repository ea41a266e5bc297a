"""Schema fuzzing (schemathesis) of every operation in our /openapi.json: no 5xx, ever, and
every error answer in the OpenAI shape.

Two runs: a fast, derandomised one against the ASGI app over a fake engine (~50 examples per
operation; schemathesis generates valid and invalid data by default), and a small one against the real server with generation
kept short (max_tokens <= 8, n <= 2).
"""

from __future__ import annotations

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from tests.helpers.fake_engine import FakeEngine
from tests.helpers.openai_errors import ERROR_KEYS
from vreason.server.api.app import create_app

FAST = settings(max_examples=50, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
LIVE = settings(max_examples=20, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))

app = create_app(FakeEngine(), manage_engine=False)
fake_schema = schemathesis.openapi.from_asgi("/openapi.json", app)


BATCH_PATH = "/v1/chat/completions/batch"
CHAT_PATHS = ("/v1/chat/completions", "/invocations", BATCH_PATH)


def _bound(case, model: str) -> None:
    """Aim chat bodies at the served model and keep generation short (the real engine runs them)."""
    body = case.body
    if case.operation.path not in CHAT_PATHS or not isinstance(body, dict):
        return
    if case.operation.path == BATCH_PATH and isinstance(body.get("messages"), list):
        body["messages"] = body["messages"][:2]  # each conversation is an engine request
    if "model" in body:
        body["model"] = model
    for key in ("max_tokens", "max_completion_tokens"):
        if _number(body.get(key)):  # 1e8 arrives as a float and is a valid int to pydantic
            body[key] = max(-1, min(body[key], 8))  # negative values still reach validation
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = 8
    if _number(body.get("n")):
        body["n"] = min(body["n"], 2)


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check(response) -> None:
    status = response.status_code
    assert status < 500, f"{status}: {response.content[:400]!r}"
    if status >= 400:
        ctype = response.headers.get("content-type") or response.headers.get("Content-Type") or [""]
        ctype = ctype[0] if isinstance(ctype, list) else ctype
        assert ctype.startswith("application/json"), f"{status} with content-type {ctype!r}"
        body = json.loads(response.content)
        assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body


@fake_schema.parametrize()
@FAST
def test_fuzz_fake_engine(case):
    _bound(case, FakeEngine.model_name)
    _check(case.call())


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=str)
def test_fuzz_real_server(server, mode):
    # Strategies per operation rather than schemathesis' lazy pytest loader, which does not
    # work with this pytest (Function._nodeid).
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    for result in schema.get_all_operations():
        operation = result.ok()

        @LIVE
        @given(case=operation.as_strategy(mode))
        def run(case):
            _bound(case, server.model)
            _check(case.call(timeout=60))

        try:
            run()
        except Unsatisfiable:
            # A GET without parameters has no invalid form to generate; anything else must run.
            if mode == schemathesis.GenerationMode.POSITIVE or operation.body:
                raise
