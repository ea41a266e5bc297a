"""Start-up checks: where V-Reason cannot run, `--vreason on` refuses to start naming the flag to
change, and otherwise the server starts with V-Reason disabled and serves plain requests."""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest

from tests.helpers.servers import VENV_BIN, clean_env, start_server, stop_server
from tests.helpers.text_model import build_text_model

pytestmark = pytest.mark.slow

NGRAM = json.dumps({"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 3, "prompt_lookup_min": 1})


@pytest.mark.parametrize("flags,names", [
    (["--tensor-parallel-size", "2"], "--tensor-parallel-size 1"),
    (["--speculative-config", NGRAM], "remove --speculative-config"),
])
def test_vreason_on_refuses_to_start_where_it_cannot_run(demo_model, flags, names):
    cmd = [str(VENV_BIN / "vreason"), "serve", "--model", str(demo_model), "--port", "0", "--dtype", "float32",
           "--vreason", "on", "--log-format", "text", *flags]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=clean_env())
    assert out.returncode == 3, out.stderr[-2000:]  # the engine did not start (README, exit codes)
    log = out.stdout + out.stderr
    assert "V-Reason cannot run on this deployment, and --vreason on requires it" in log and names in log
    assert "Application startup complete" not in log


@pytest.fixture(scope="module")
def text_server(demo_model, media_dir, tmp_path_factory):
    model = build_text_model(demo_model, tmp_path_factory.mktemp("qwen2-text"))
    s = start_server(model, media_dir, tmp_path_factory.mktemp("text") / "server.log", "--enforce-eager", name="text")
    yield s
    stop_server(s)


def test_unsupported_model_serves_plain_and_refuses_vreason(text_server):
    url = f"{text_server.url}/v1/chat/completions"
    body = {"model": "text", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}
    plain = httpx.post(url, json=body, timeout=120)
    assert plain.status_code == 200 and plain.json()["usage"]["completion_tokens"] == 4
    refused = httpx.post(url, json={**body, "vreason": {"trace": True}}, timeout=120)
    assert refused.status_code == 400
    err = refused.json()["error"]
    assert err["code"] == "vreason_unavailable" and err["param"] == "vreason" and "Qwen2ForCausalLM" in err["message"]
    (model,) = httpx.get(f"{text_server.url}/v1/models").json()["data"]
    assert model["vreason"]["available"] is False and "Qwen2ForCausalLM" in model["vreason"]["unavailable"][0]
    assert "adapter" not in model["vreason"]
    stats = text_server.stats()
    assert stats["available"] is False and stats["slab_bytes"] == 0 and stats["adapter"] == ""
    assert "V-Reason is DISABLED on this server" in text_server.log.read_text()
