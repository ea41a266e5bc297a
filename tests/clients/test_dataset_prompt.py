"""Demo dataset (deterministic, ground truth matches the pixels), dataset loading, prompt, CLI wiring."""

from __future__ import annotations

import argparse
import json

import cv2
import numpy as np
import pytest
from vreason.clients.eval.dataset import DatasetError, load_dataset, video_url
from vreason.clients.eval.demo_dataset import make_demo_dataset
from vreason.clients.eval.prompt import QUESTION_TEMPLATE, TYPE_SUFFIX, build_prompt, lettered_options


def _frames(path) -> np.ndarray:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
    return np.stack(frames)


def _centroid(frame: np.ndarray, rgb) -> tuple[float, float] | None:
    mask = np.abs(frame.astype(int) - np.array(rgb)).sum(-1) < 90
    if mask.sum() < 8:
        return None
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


def test_demo_dataset_is_deterministic_and_complete(tmp_path):
    from vreason.clients.cli import main

    assert main(["make-demo-dataset", str(tmp_path / "a"), "--n", "8", "--seed", "3"]) == 0
    make_demo_dataset(tmp_path / "b", n=8, seed=3)
    for rel in ["dataset.jsonl"] + [f"videos/{p.name}" for p in (tmp_path / "a" / "videos").iterdir()]:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    items = load_dataset(tmp_path / "a" / "dataset.jsonl")
    assert len(items) == 8
    assert {i["type"] for i in items} == {"multiple-choice", "numerical", "regression"}
    assert {i["meta"]["task"] for i in items} == {"direction", "order", "count", "distance"}
    assert all(i["video"].startswith(str(tmp_path / "a" / "videos")) for i in items)  # resolved paths
    c = make_demo_dataset(tmp_path / "c", n=8, seed=4)
    assert c.read_bytes() != (tmp_path / "a" / "dataset.jsonl").read_bytes()


def test_demo_ground_truth_matches_the_video(tmp_path):
    from vreason.clients.synth_video import COLORS

    items = load_dataset(make_demo_dataset(tmp_path, n=8, seed=1))
    for item in items:
        frames = _frames(item["video"])
        assert frames.shape == (16, 112, 112, 3)
        task, shapes = item["meta"]["task"], item["meta"]["shapes"]
        if task == "direction":
            kind, color, *_ = shapes[0]
            (x0, y0), (x1, y1) = _centroid(frames[0], COLORS[color]), _centroid(frames[-1], COLORS[color])
            moved = {"left": x0 - x1, "right": x1 - x0, "up": y0 - y1, "down": y1 - y0}
            truth = max(moved, key=moved.get)
            assert item["options"]["ABCD".index(item["answer"])] == truth
            assert f"{color} {kind}" in item["question"]
        elif task == "order":
            first_seen = {}
            for _, color, *_ in shapes:
                first_seen[color] = next(t for t, f in enumerate(frames) if _centroid(f, COLORS[color]))
            order = ", ".join(sorted(first_seen, key=first_seen.get))
            assert item["options"]["ABCD".index(item["answer"])] == order
            assert len(set(item["options"])) == 4
        elif task == "count":
            assert item["answer"] == len(shapes) and 1 <= item["answer"] <= 5
            assert all(_centroid(frames[0], COLORS[s[1]]) for s in shapes)
        else:
            (x0, _), (x1, _) = (
                _centroid(frames[0], COLORS[shapes[0][1]]),
                _centroid(frames[-1], COLORS[shapes[0][1]]),
            )
            assert abs(abs(x1 - x0) - item["answer"]) <= 2


def test_load_dataset_validation(tmp_path):
    p = tmp_path / "d.jsonl"
    good = {"id": 1, "video": "v.mp4", "question": "q", "options": None, "answer": 3, "type": "numeric"}
    p.write_text(
        json.dumps(good)
        + "\n\n"
        + json.dumps({**good, "id": 2, "type": "multiple choice", "options": ["x", "y"], "answer": "A"})
        + "\n"
    )
    items = load_dataset(p)
    assert [i["id"] for i in items] == ["1", "2"]
    assert [i["type"] for i in items] == ["numerical", "multiple-choice"]
    assert items[0]["dataset"] == "d" and items[0]["video"] == str(tmp_path / "v.mp4")
    assert len(load_dataset(p, limit=1)) == 1
    bad_rows = [
        ("{not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({"id": 1}), "missing"),
        (json.dumps({**good, "type": "essay"}), "type"),
        (json.dumps({**good, "type": "multiple-choice"}), "needs options"),
        (json.dumps(good) + "\n" + json.dumps(good), "duplicate"),
    ]
    for text, msg in bad_rows:
        p.write_text(text + "\n")
        with pytest.raises(DatasetError, match=msg):
            load_dataset(p)
    with pytest.raises(DatasetError, match="cannot read"):
        load_dataset(tmp_path / "missing.jsonl")


def test_video_url_modes(tmp_path):
    v = tmp_path / "clip.webm"
    v.write_bytes(b"\x1a\x45\xdf\xa3")
    assert video_url(str(v), "data") == "data:video/webm;base64,GkXfow=="
    assert video_url(str(v), "file") == f"file://{v}"
    assert video_url("https://example.com/a.mp4", "data") == "https://example.com/a.mp4"
    with pytest.raises(OSError):
        video_url(str(tmp_path / "gone.mp4"), "data")


def test_prompt_follows_video_r1():
    p = build_prompt("Which way does it move?", "multiple-choice", ["left", "B. right"])
    assert p.startswith(
        "Which way does it move?\nOptions:\nA. left\nB. right\nPlease think about this question"
    )
    assert p.endswith(TYPE_SUFFIX["multiple-choice"]) and "<think> </think>" in p
    assert (
        build_prompt("How far?", "regression")
        == QUESTION_TEMPLATE.format(question="How far?") + TYPE_SUFFIX["regression"]
    )
    assert lettered_options(["(a) x"]) == ["A. (a) x"] and lettered_options(["A) x"]) == ["A) x"]
    with pytest.raises(ValueError):
        build_prompt("q", "essay")


def test_register_adds_the_subcommands():
    from vreason.clients.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    a = parser.parse_args(
        [
            "eval",
            "d.jsonl",
            "--base-url",
            "http://x",
            "--out",
            "o",
            "--compare",
            "--vreason-options",
            '{"lr": 0.02}',
            "--video-mode",
            "file",
        ]
    )
    assert a.compare and a.baseline == "observe" and a.vreason_options == {"lr": 0.02} and callable(a.func)
    assert parser.parse_args(["report", "o"]).func.__name__ == "cmd_report"
    assert parser.parse_args(["make-demo-dataset", "d", "--n", "3"]).n == 3
    b = parser.parse_args(["bench", "--base-url", "http://x", "--concurrency", "1", "4", "--vreason-on"])
    assert b.concurrency == [1, 4] and b.vreason_on and b.requests == 8
    for argv in (
        ["eval", "d", "--base-url", "u", "--out", "o", "--vreason-options", "[1]"],
        ["bench", "--base-url", "u", "--requests", "0"],
    ):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)


def test_cli_module_is_import_light():
    import subprocess
    import sys

    code = (
        "import sys, vreason.clients.cli; "
        "print(sorted(m for m in ('httpx', 'matplotlib', 'openai', 'tqdm', 'cv2') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
