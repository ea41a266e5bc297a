"""`vreason eval` and `vreason report` against the real server (random demo model: answers are
gibberish, so these tests check shapes, files, counts and resumability, not accuracy)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import httpx
import pytest
from PIL import Image
from vreason.clients.cli import main
from vreason.clients.eval.demo_dataset import make_demo_dataset
from vreason.clients.synth_video import mp4_data_url

pytestmark = pytest.mark.slow


def run_cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(argv)
    return rc, out.getvalue()


def rows_of(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def demo_set(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), n=4, seed=0)


@pytest.fixture(scope="module")
def compare_run(server, demo_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    argv = [
        "eval",
        str(demo_set),
        "--base-url",
        server.url,
        "--model",
        server.model,
        "--compare",
        "--max-tokens",
        "24",
        "--concurrency",
        "2",
        "--out",
        str(out),
        "--no-progress",
    ]
    rc, stdout = run_cli(argv)
    return out, rc, stdout, argv


def test_compare_completes_with_a_summary(compare_run):
    out, rc, stdout, _ = compare_run
    assert rc == 0, stdout
    assert "| metric | off | on | on - off |" in stdout and "demo-direction" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["modes"]) == ["off", "on"]
    for mode in ("off", "on"):
        m = summary["modes"][mode]
        assert m["items"] == 4 and m["errors"] == 0 and m["accuracy_items"] == 3 and m["mra_items"] == 1
        assert 0 <= m["accuracy"] <= 1 and 0 <= m["mra"] <= 1 and 1 <= m["mean_output_tokens"] <= 24
    assert summary["modes"]["off"]["mean_updates"] == 0 and summary["modes"]["on"]["mean_updates"] > 0
    assert {(g["dataset"], g["mode"]) for g in summary["groups"]} == {
        (f"demo-{t}", m) for t in ("direction", "order", "count", "distance") for m in ("off", "on")
    }
    rows = rows_of(out / "results.jsonl")
    assert sorted((r["id"], r["mode"]) for r in rows) == sorted(
        (f"demo-{i:04d}", m) for i in range(4) for m in ("off", "on")
    )
    for r in rows:
        assert r["error"] is None and r["latency_s"] > 0 and 1 <= r["completion_tokens"] <= 24
        assert r["prompt_tokens"] > 32 and isinstance(r["output"], str)
        trace = r["vreason"]
        assert len(trace["steps"]) == r["completion_tokens"]
        assert set(trace["steps"][0]) >= {"entropy", "ema", "alpha", "updated"}
        if r["mode"] == "off":  # observe-only: traced, never updated
            assert r["vreason_request"] == {"enabled": True, "trace": True, "update_every": 4096}
            assert trace["updates"] == 0 and not any(s["updated"] for s in trace["steps"])
        else:
            assert r["vreason_request"] == {"enabled": True, "trace": True}
            assert trace["updates"] == sum(s["updated"] for s in trace["steps"]) > 0


def test_observe_only_mode_makes_no_update_and_keeps_the_plain_output(server):
    body = {
        "model": server.model,
        "max_tokens": 40,
        "temperature": 0,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "video_url", "video_url": {"url": mp4_data_url()}},
                    {"type": "text", "text": "Describe it."},
                ],
            }
        ],
    }
    url = f"{server.url}/v1/chat/completions"
    observe = httpx.post(
        url, json={**body, "vreason": {"enabled": True, "trace": True, "update_every": 4096}}, timeout=120
    ).json()
    plain = httpx.post(url, json={**body, "vreason": False}, timeout=120).json()
    assert observe["vreason"]["updates"] == 0 and observe["vreason"]["skipped_updates"] == 0
    assert len(observe["vreason"]["steps"]) == observe["usage"]["completion_tokens"]
    assert all(s["updated"] is False and s["alpha"] in (-1, 1) for s in observe["vreason"]["steps"])
    assert observe["choices"][0]["message"]["content"] == plain["choices"][0]["message"]["content"]


def test_rerun_skips_answered_items_and_retries_failed_ones(compare_run):
    src, _, _, argv = compare_run
    out = src.parent / (src.name + "-resume")
    shutil.copytree(src, out)
    argv = [a if a != str(src) else str(out) for a in argv]
    before = rows_of(out / "results.jsonl")
    rc, stdout = run_cli(argv)
    assert rc == 0 and rows_of(out / "results.jsonl") == before  # nothing asked twice
    assert json.loads((out / "run_config.json").read_text())["skipped_as_done"] == 8
    # One failed item and a torn last line (a run killed mid-write): only the failed pair reruns.
    failed = {**before[0], "error": "HTTP 503: busy", "output": None}
    with (out / "results.jsonl").open("a") as fh:
        fh.write(json.dumps(failed) + "\n" + '{"id": "demo-0003", "mo')
    rc, _ = run_cli(argv)
    rows = rows_of_tolerant(out / "results.jsonl")
    assert rc == 0 and len(rows) == len(before) + 2
    assert (rows[-1]["id"], rows[-1]["mode"]) == (before[0]["id"], before[0]["mode"]) and rows[-1][
        "error"
    ] is None
    summary = json.loads((out / "summary.json").read_text())
    assert all(m["items"] == 4 and m["errors"] == 0 for m in summary["modes"].values())


def rows_of_tolerant(path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return rows


def test_report_from_the_compare_run(compare_run):
    out = compare_run[0]
    rc, stdout = run_cli(["report", str(out)])
    assert rc == 0 and "report.md" in stdout
    md = (out / "report.md").read_text()
    for name in ("entropy_curve.png", "accuracy.png", "output_tokens.png", "alpha_example.png"):
        assert f"]({name})" in md
        path = out / name
        assert path.stat().st_size > 5000
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG" and min(im.size) >= 300
            assert len(im.convert("RGB").getcolors(maxcolors=1 << 20)) > 20


def test_file_urls_plain_baseline_and_failures(server, media_dir, demo_set, tmp_path):
    ds = tmp_path / "mixed.jsonl"
    items = [
        {
            "id": "ok",
            "video": str(media_dir / "shapes.mp4"),
            "question": "How many shapes?",
            "options": None,
            "answer": 2,
            "type": "numerical",
        },
        # outside --allowed-local-media-path: the server refuses it (400), the run goes on
        {
            "id": "refused",
            "video": str(demo_set.parent / "videos" / "0000_direction.mp4"),
            "question": "Which way?",
            "options": ["left", "right"],
            "answer": "B",
            "type": "multiple-choice",
        },
        {
            "id": "unused",
            "video": "nowhere.mp4",
            "question": "?",
            "options": None,
            "answer": "x",
            "type": "free-form",
        },
    ]
    ds.write_text("".join(json.dumps(i) + "\n" for i in items))
    out = tmp_path / "out"
    rc, stdout = run_cli(
        [
            "eval",
            str(ds),
            "--base-url",
            server.url + "/v1",
            "--compare",
            "--baseline",
            "plain",
            "--video-mode",
            "file",
            "--limit",
            "2",
            "--max-tokens",
            "8",
            "--out",
            str(out),
            "--no-progress",
            "--fps",
            "2",
        ]
    )
    assert rc == 1  # some items failed: re-running retries them
    rows = {(r["id"], r["mode"]): r for r in rows_of(out / "results.jsonl")}
    assert set(rows) == {("ok", "off"), ("ok", "on"), ("refused", "off"), ("refused", "on")}
    assert rows[("ok", "off")]["vreason_request"] is False and rows[("ok", "off")]["vreason"] is None
    assert rows[("ok", "on")]["vreason"]["updates"] >= 1 and rows[("ok", "on")]["error"] is None
    for mode in ("off", "on"):
        bad = rows[("refused", mode)]
        assert bad["error"].startswith("HTTP 400") and bad["score"] == 0.0 and not bad["answered"]
    assert json.loads((out / "run_config.json").read_text())["model"] == server.model  # from /v1/models
