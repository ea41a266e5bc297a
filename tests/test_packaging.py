"""Packaging contract: namespace mapping, no bare top-level packages, deterministic demo model."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = set()
    for top in ("server", "kernels", "clients"):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT).parts
            found.add(".".join(("vreason",) + rel))
    assert found == listed


def test_folders_are_not_importable_as_bare_names():
    code = ("import importlib.util as u, vreason.kernels, vreason.server;"
            "print([n for n in ('kernels', 'server', 'clients') if u.find_spec(n)])")
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_demo_model_is_deterministic(tmp_path):
    from vreason.server.checkpoints.demo import build_demo_model, is_demo_model

    a, b = build_demo_model(tmp_path / "a"), build_demo_model(tmp_path / "b")
    for name in ("model.safetensors", "tokenizer.json", "config.json", "chat_template.jinja"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert is_demo_model(a)
    cfg = __import__("json").loads((a / "config.json").read_text())
    head_dim = cfg["text_config"]["hidden_size"] // cfg["text_config"]["num_attention_heads"]
    assert head_dim >= 32  # vLLM's CPU attention needs it
