"""Scoring (Video-R1 protocol + MRA) and aggregation, against hand-made cases."""

from __future__ import annotations

import math

import pytest
from vreason.clients.eval.scoring import MRA_TOLERANCES, mra, score_output
from vreason.clients.eval.summary import percentile, read_results, summarize, summary_table

MC = {"type": "multiple-choice", "options": ["A. left", "B. right", "C. up", "D. down"], "answer": "B"}
NUM = {"type": "numerical", "options": None, "answer": 3}
REG = {"type": "regression", "options": None, "answer": 60}


def test_mra_thresholds_and_edges():
    assert MRA_TOLERANCES == (0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05)
    assert mra(60, 60) == 1.0
    assert mra(57, 60) == pytest.approx(0.9)  # 5 % off: every threshold but 0.95
    assert mra(63, 60) == pytest.approx(0.9)  # symmetric
    assert mra(105, 100) == pytest.approx(0.9)  # exactly 5 % is not < 5 %: strict inequality
    assert mra(150, 100) == 0.0  # exactly 50 % misses the loosest threshold
    assert mra(149, 100) == pytest.approx(0.1)
    assert mra(-60, 60) == 0.0
    assert mra(-54, -60) == pytest.approx(0.8)  # |gt| in the denominator: 10 % off
    assert mra(0, 0) == 1.0 and mra(1, 0) == 0.0
    assert mra(None, 60) == 0.0 and mra(math.nan, 60) == 0.0 and mra(math.inf, 60) == 0.0


@pytest.mark.parametrize(
    "item, output, score, answered",
    [
        (MC, "<think>hmm</think><answer>B</answer>", 1.0, True),
        (MC, "<answer>b.</answer>", 1.0, True),
        (MC, "<answer>right</answer>", 1.0, True),
        (MC, "<answer>A</answer>", 0.0, True),
        (MC, "<answer>Z</answer>", 0.0, False),
        (MC, "The answer is B", 0.0, False),  # no tags and not a bare letter
        (MC, "B", 1.0, True),  # bare fallback, as Video-R1's whole-output match
        (MC, "<answer>B", 0.0, False),  # truncated
        ({**MC, "answer": "right"}, "<answer>B</answer>", 1.0, True),  # ground truth given as text
        (NUM, "<answer>3</answer>", 1.0, True),
        (NUM, "<answer>three</answer>", 1.0, True),
        (NUM, "<answer>3 shapes</answer>", 1.0, True),
        (NUM, "<answer>3.0</answer>", 0.0, True),  # Video-R1's decimal-point consistency check
        ({**NUM, "answer": 3.14}, "<answer>3.14159</answer>", 1.0, True),  # 2-decimal rounding
        ({**NUM, "answer": "1,234"}, "<answer>1234</answer>", 1.0, True),
        (NUM, "<answer>lots</answer>", 0.0, False),
        (REG, "<answer>57 px</answer>", 0.9, True),
        (REG, "<answer>sixty</answer>", 0.0, False),
        (REG, "", 0.0, False),
        (
            {"type": "free-form", "options": None, "answer": "A red square"},
            "<answer>a red  square.</answer>",
            1.0,
            True,
        ),
    ],
)
def test_score_output(item, output, score, answered):
    s = score_output(item, output)
    assert s["score"] == pytest.approx(score) and s["answered"] is answered
    assert s["metric"] == ("mra" if item["type"] == "regression" else "acc")


def test_score_output_never_raises_on_garbage():
    for out in [
        "<answer>\x00\uffff</answer>",
        "<answer><answer>B</answer>",
        "</answer><answer>",
        "<" * 1000,
        "<answer>" + "9" * 400 + "</answer>",
    ]:
        for item in (MC, NUM, REG):
            s = score_output(item, out)
            assert 0.0 <= s["score"] <= 1.0


def test_percentile():
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([1, 2, 3, 4, None, math.nan], 100) == 4


def test_summarize_and_latest_row_wins(tmp_path):
    rows = [
        {"id": "a", "mode": "on", "metric": "acc", "score": 0.0, "error": "HTTP 503"},  # retried below
        {
            "id": "a",
            "mode": "on",
            "metric": "acc",
            "score": 1.0,
            "answered": True,
            "completion_tokens": 10,
            "latency_s": 1.0,
            "vreason": {"updates": 5},
            "error": None,
        },
        {
            "id": "b",
            "mode": "on",
            "metric": "mra",
            "score": 0.5,
            "answered": True,
            "completion_tokens": 30,
            "latency_s": 3.0,
            "vreason": {"updates": 15},
            "error": None,
        },
        {"id": "a", "mode": "off", "metric": "acc", "score": 0.0, "error": "timeout"},
    ]
    path = tmp_path / "results.jsonl"
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"id": "c", "mo')  # torn last line
    latest = read_results(path)
    assert len(latest) == 3
    s = summarize(latest)
    on, off = s["modes"]["on"], s["modes"]["off"]
    assert on["accuracy"] == 1.0 and on["mra"] == 0.5 and on["mean_output_tokens"] == 20
    assert on["mean_updates"] == 10 and on["p50_latency_s"] == 2.0
    assert off["errors"] == 1 and off["accuracy"] == 0.0 and off["mean_output_tokens"] is None
    assert list(s["modes"]) == ["off", "on"]
    table = summary_table(s)
    assert "| metric | off | on | on - off |" in table and "accuracy" in table
