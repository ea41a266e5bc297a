"""`vreason bench` against the real server with tiny counts."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from vreason.clients.cli import main

pytestmark = pytest.mark.slow


def test_bench_vreason_vs_baseline_on_one_server(server, tmp_path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["bench", "--base-url", server.url, "--requests", "2", "--concurrency", "1", "2", "--vreason-on",
                   "--max-tokens", "8", "--warmup", "1", "--out", str(tmp_path / "b.json")])
    table = out.getvalue()
    assert rc == 0, table
    assert "| conc | arm |" in table and "**vreason/baseline**" in table and "E2E p99 s" in table
    result = json.loads((tmp_path / "b.json").read_text())
    assert [a["name"] for a in result["arms"]] == ["baseline", "vreason"]
    assert result["arms"][0]["vreason"] is False and result["arms"][1]["vreason"] == {"enabled": True}
    assert [lvl["concurrency"] for lvl in result["levels"]] == [1, 2]
    for lvl in result["levels"]:
        assert lvl["interleaved"]
        for s in lvl["stats"].values():
            assert s["ok"] == 2 and s["errors"] == 0 and s["mean_output_tokens"] == 8
            assert 0 < s["ttft_p50_s"] <= s["e2e_p50_s"] <= s["e2e_p99_s"] and s["tpot_mean_s"] > 0
            assert s["output_tok_per_s"] > 0


def test_bench_two_servers(server, media_dir):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["bench", "--base-url", server.url, "--base-url-b", server.url + "/v1", "--model", server.model,
                   "--requests", "1", "--concurrency", "1", "--max-tokens", "4", "--warmup", "0",
                   "--video", str(media_dir / "shapes.mp4"), "--video-mode", "file"])
    assert rc == 0 and "**B/A**" in out.getvalue() and "| 1 | A | 1 | 0 |" in out.getvalue()
