"""Evaluation datasets: JSONL rows {"id", "video", "question", "options", "answer", "type"}.

Optional per row: "dataset" (a group name for the report; default: the file's stem) and
anything else, which is carried along untouched. Relative video paths are resolved against
the JSONL file's folder.
"""

from __future__ import annotations

import base64
import functools
import json
import mimetypes
from pathlib import Path

from .prompt import TYPES

TYPE_ALIASES = {
    "multiple choice": "multiple-choice",
    "multiple_choice": "multiple-choice",
    "mc": "multiple-choice",
    "mcq": "multiple-choice",
    "numeric": "numerical",
    "free form": "free-form",
    "free_form": "free-form",
    "open-ended": "free-form",
}
URL_SCHEMES = ("http://", "https://", "data:", "file://")
_VIDEO_MIME = {
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".webm": "video/webm",
    ".mkv": "video/x-matroska",
    ".avi": "video/x-msvideo",
    ".mov": "video/quicktime",
}


class DatasetError(ValueError):
    """A dataset file that cannot be used (the message names the line)."""


def load_dataset(path: str | Path, limit: int | None = None) -> list[dict]:
    """Read, validate and normalise a dataset; ``limit`` keeps the first N items."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DatasetError(f"cannot read dataset {path}: {e}") from e
    items, seen = [], set()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{where}: not JSON ({e.msg})") from e
        if not isinstance(row, dict):
            raise DatasetError(f"{where}: a row must be a JSON object")
        missing = [k for k in ("id", "video", "question", "answer", "type") if k not in row]
        if missing:
            raise DatasetError(f"{where}: missing {', '.join(missing)}")
        item = dict(row)
        item["id"] = str(row["id"])
        qtype = str(row["type"]).strip().lower()
        item["type"] = TYPE_ALIASES.get(qtype, qtype)
        if item["type"] not in TYPES:
            raise DatasetError(f"{where}: type {row['type']!r} is not one of {', '.join(TYPES)}")
        options = row.get("options")
        if options is not None and (not isinstance(options, list) or not options):
            raise DatasetError(f"{where}: options must be a non-empty list or null")
        if item["type"] == "multiple-choice" and not options:
            raise DatasetError(f"{where}: a multiple-choice item needs options")
        if item["id"] in seen:
            raise DatasetError(f"{where}: duplicate id {item['id']!r}")
        seen.add(item["id"])
        video = str(row["video"])
        if not video.startswith(URL_SCHEMES):
            video = str((path.parent / video).resolve())
        item["video"] = video
        item.setdefault("dataset", path.stem)
        items.append(item)
        if limit is not None and len(items) >= limit:
            break
    return items


def video_url(video: str, mode: str = "data") -> str:
    """The video_url the server gets: URLs pass through; a local path becomes a base64 data URL
    (``mode="data"``) or a file:// URL (``mode="file"``, for servers started with
    --allowed-local-media-path covering it)."""
    if video.startswith(URL_SCHEMES):
        return video
    if mode == "file":
        return Path(video).resolve().as_uri()
    if mode != "data":
        raise ValueError(f"video mode must be 'data' or 'file', got {mode!r}")
    return _data_url(str(Path(video).resolve()))


# Compare mode sends each video twice in a row; a small cache saves re-encoding it.
@functools.lru_cache(maxsize=4)
def _data_url(path: str) -> str:
    suffix = Path(path).suffix.lower()
    mime = _VIDEO_MIME.get(suffix) or mimetypes.guess_type(path)[0] or "video/mp4"
    with open(path, "rb") as fh:
        return f"data:{mime};base64," + base64.b64encode(fh.read()).decode("ascii")
