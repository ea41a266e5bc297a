"""A deterministic synthetic video QA set: moving shapes rendered with OpenCV, questions with
ground truth derived from the same `Shape` objects that are drawn.

Four tasks, cycled by item index (so any n >= 4 has all of them):
  direction (multiple-choice), colour order of appearance (multiple-choice),
  shape count (numerical), distance travelled in pixels (regression).
Clips are 112x112 px (the server's default frame cap, so no resizing changes pixel answers),
16 frames at 8 fps.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
from vreason.clients.synth_video import COLORS, KINDS, Shape, write_moving_shapes_mp4

SIZE, FRAMES, FPS = 112, 16, 8.0
DIRECTIONS = ("left", "right", "up", "down")
TASKS = ("direction", "order", "count", "distance")
_PALETTE = tuple(c for c in COLORS if c != "white")


def _letter(i: int) -> str:
    return "ABCDEFGH"[i]


def _direction(rng) -> tuple[list[Shape], dict]:
    color, other = rng.choice(_PALETTE, size=2, replace=False)
    kind = str(rng.choice(KINDS))
    d = str(rng.choice(DIRECTIONS))
    speed, across = 4.0, float(rng.integers(30, 83))
    start = {"left": (86.0, across), "right": (26.0, across), "up": (across, 86.0), "down": (across, 26.0)}[d]
    vel = {"left": (-speed, 0.0), "right": (speed, 0.0), "up": (0.0, -speed), "down": (0.0, speed)}[d]
    shapes = [Shape(kind, str(color), start, vel, 18)]
    if rng.random() < 0.5:  # a still distractor in a corner the mover never crosses
        corner = (14.0, 14.0) if d in ("right", "down") else (98.0, 98.0)
        shapes.append(Shape(str(rng.choice(KINDS)), str(other), corner, (0.0, 0.0), 12))
    options = list(DIRECTIONS)
    rng.shuffle(options)
    return shapes, {
        "question": f"In which direction does the {color} {kind} move?",
        "options": options,
        "answer": _letter(options.index(d)),
        "type": "multiple-choice",
    }


def _order(rng) -> tuple[list[Shape], dict]:
    colors = [str(c) for c in rng.choice(_PALETTE, size=3, replace=False)]
    entry = [int(e) for e in rng.permutation([1, 5, 9])]
    speed = 6.0
    # Shape j's centre reaches the left edge at frame entry[j]; lanes keep them apart.
    shapes = [
        Shape(str(rng.choice(KINDS)), c, (-speed * e, lane), (speed, 0.0), 18)
        for c, e, lane in zip(colors, entry, (22.0, 56.0, 90.0))
    ]
    truth = tuple(c for _, c in sorted(zip(entry, colors)))
    wrong = [p for p in itertools.permutations(colors) if p != truth]
    picks = [wrong[i] for i in rng.choice(len(wrong), size=3, replace=False)]
    perms = [truth, *picks]
    rng.shuffle(perms)
    options = [", ".join(p) for p in perms]
    return shapes, {
        "question": "In what order do the colours of the shapes first appear in the video?",
        "options": options,
        "answer": _letter(perms.index(truth)),
        "type": "multiple-choice",
    }


def _count(rng) -> tuple[list[Shape], dict]:
    k = int(rng.integers(1, 6))
    cells = rng.choice(9, size=k, replace=False)
    colors = rng.choice(_PALETTE, size=k, replace=False)
    shapes = []
    for cell, color in zip(cells, colors):
        cx, cy = 19.0 + 37.0 * (cell % 3), 19.0 + 37.0 * (cell // 3)
        vel = tuple(float(v) for v in rng.choice([-0.5, 0.0, 0.5], size=2))  # a drift that stays in its cell
        shapes.append(Shape(str(rng.choice(KINDS)), str(color), (cx, cy), vel, 16))
    return shapes, {
        "question": "How many shapes are there in the video?",
        "options": None,
        "answer": k,
        "type": "numerical",
    }


def _distance(rng) -> tuple[list[Shape], dict]:
    color = str(rng.choice(_PALETTE))
    kind = str(rng.choice(KINDS))
    speed = float(rng.integers(2, 7))
    rightward = bool(rng.random() < 0.5)
    y = float(rng.integers(24, 89))
    start = (12.0, y) if rightward else (100.0, y)
    shapes = [Shape(kind, color, start, (speed if rightward else -speed, 0.0), 16)]
    dist = int(speed * (FRAMES - 1))
    return shapes, {
        "question": f"The video is {SIZE} pixels wide. How many pixels does the {color} {kind} "
        "travel between the first and the last frame?",
        "options": None,
        "answer": dist,
        "type": "regression",
    }


_MAKERS = {"direction": _direction, "order": _order, "count": _count, "distance": _distance}


def make_demo_dataset(out_dir: str | Path, n: int = 8, seed: int = 0) -> Path:
    """Write n clips under out_dir/videos and out_dir/dataset.jsonl; returns the jsonl path.
    Equal (n, seed) give byte-identical files."""
    if n < 1:
        raise ValueError("n must be >= 1")
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        task = TASKS[i % len(TASKS)]
        rng = np.random.default_rng([seed, i])  # per item, so item i does not depend on n
        shapes, qa = _MAKERS[task](rng)
        rel = f"videos/{i:04d}_{task}.mp4"
        write_moving_shapes_mp4(
            out / rel, num_frames=FRAMES, size=(SIZE, SIZE), fps=FPS, shapes=shapes, seed=seed * 100003 + i
        )
        rows.append(
            {
                "id": f"demo-{i:04d}",
                "video": rel,
                "dataset": f"demo-{task}",
                **qa,
                "meta": {
                    "task": task,
                    "shapes": [
                        [s.kind, s.color_name, list(s.start_xy), list(s.velocity_xy), s.size] for s in shapes
                    ],
                },
            }
        )
    path = out / "dataset.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
