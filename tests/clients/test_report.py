"""`vreason report` on hand-made results (no server): report.md and PNGs that open with Pillow."""

from __future__ import annotations

import json
import math

from PIL import Image
from vreason.clients.eval.report import mean_curves, pick_example

PNGS = ("entropy_curve.png", "accuracy.png", "output_tokens.png", "alpha_example.png")


def _trace(n: int, peak: int, updates: bool) -> dict:
    steps, ema, best = [], 0.0, 0.0
    for t in range(1, n + 1):
        h = 3.0 * math.exp(-(((t - peak) / 6) ** 2)) + 0.5
        ema = 0.9 * ema + 0.1 * h
        alpha = -1.0 if ema < best else 1.0
        best = max(best, ema)
        steps.append({"entropy": h, "ema": ema, "alpha": alpha, "updated": updates and t % 2 == 0})
    return {
        "updates": sum(s["updated"] for s in steps),
        "skipped_updates": 0,
        "peak_step": peak,
        "steps": steps,
    }


def write_results(path, rows_per_mode: int = 3) -> None:
    rows = []
    for i in range(rows_per_mode):
        for mode in ("off", "on"):
            qtype = ("multiple-choice", "numerical", "regression")[i % 3]
            n = 20 + 5 * i if mode == "off" else 15 + 3 * i
            rows.append(
                {
                    "id": f"x{i}",
                    "mode": mode,
                    "dataset": "toy",
                    "type": qtype,
                    "metric": "mra" if qtype == "regression" else "acc",
                    "score": float(mode == "on"),
                    "answered": True,
                    "completion_tokens": n,
                    "latency_s": 0.1 * n,
                    "finish_reason": "stop",
                    "vreason": _trace(n, 8, mode == "on"),
                    "error": None,
                }
            )
    rows[0]["vreason"]["steps"][3]["entropy"] = None  # a non-finite step arrives as null
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_writes_markdown_and_images(tmp_path):
    from vreason.clients.cli import main

    write_results(tmp_path / "results.jsonl")
    assert main(["report", str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    for name in PNGS:
        assert f"]({name})" in md
        with Image.open(tmp_path / name) as im:
            im.verify()
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and im.size[0] >= 400 and im.size[1] >= 300
            # not a blank canvas: a plot has many distinct colours
            assert len(im.convert("RGB").getcolors(maxcolors=1 << 20)) > 20
        assert (tmp_path / name).stat().st_size > 5000
    assert "| metric | off | on | on - off |" in md and "toy" in md


def test_curves_and_example_choice(tmp_path):
    write_results(tmp_path / "results.jsonl", rows_per_mode=2)
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    curves = mean_curves(rows)
    assert set(curves) == {"off", "on"}
    count = curves["off"]["count"]
    assert len(curves["off"]["ema"]) == 25 and count[20:] == [1] * 5  # only the longer answer reaches 21..25
    assert count[:3] == [2] * 3 and count[3] == 1 and count[4:20] == [2] * 16  # the null step is left out
    ex = pick_example(rows)
    assert ex["mode"] == "on" and ex["id"] == "x1"  # both alpha signs, longest trace


def test_report_without_traces_or_results(tmp_path):
    from vreason.clients.cli import main

    assert main(["report", str(tmp_path)]) == 2  # nothing to report: a message, exit 2
    rows = [
        {
            "id": "a",
            "mode": "off",
            "type": "numerical",
            "metric": "acc",
            "score": 0.0,
            "dataset": "d",
            "vreason": None,
            "completion_tokens": 5,
            "error": None,
        }
    ]
    (tmp_path / "results.jsonl").write_text(json.dumps(rows[0]) + "\n")
    assert main(["report", str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "No entropy traces" in md and not (tmp_path / "entropy_curve.png").exists()
    assert (tmp_path / "accuracy.png").stat().st_size > 1000
