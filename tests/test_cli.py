"""The `vreason` console script: help, env-var defaults, make-demo-model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

VREASON = str(Path(sys.executable).parent / "vreason")


def test_serve_help_lists_flags_and_env_vars():
    out = subprocess.run([VREASON, "serve", "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--model", "--served-model-name", "--max-model-len", "--max-num-seqs", "--allowed-local-media-path",
                 "--limit-mm-per-prompt", "--vreason", "--vreason-update-every", "--video-fps"):
        assert flag in out
    assert "VREASON_MAX_MODEL_LEN" in out


def test_env_var_sets_a_default():
    from vreason.server import cli

    parser_env = {**os.environ, "VREASON_MAX_MODEL_LEN": "8192"}
    code = ("import argparse; from vreason.server import cli; p = argparse.ArgumentParser();"
            "cli._add_serve_args(p); print(p.parse_args([]).max_model_len, p.parse_args(['--max-model-len', '7']).max_model_len)")
    out = subprocess.run([sys.executable, "-c", code], env=parser_env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["8192", "7"]
    assert cli.default_cache_dir()


def test_make_demo_model(tmp_path):
    subprocess.run([VREASON, "make-demo-model", str(tmp_path / "m")], check=True, capture_output=True)
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert (tmp_path / "m" / "vreason_demo_model.json").is_file()


def test_bad_option_exits_cleanly():
    r = subprocess.run([VREASON, "serve", "--vreason-lr", "-1"], capture_output=True, text=True)
    assert r.returncode == 2 and "invalid option" in r.stderr and "Traceback" not in r.stderr
