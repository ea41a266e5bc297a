"""The `vreason` console script: help, env-var defaults, make-demo-model."""

from __future__ import annotations

import os
import socket
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


def test_make_demo_model_of_another_family(tmp_path):
    import json

    r = subprocess.run([VREASON, "make-demo-model", str(tmp_path / "q2"), "--architecture", "qwen2_vl"],
                       check=True, capture_output=True, text=True)
    assert "Qwen2-VL" in r.stdout
    config = json.loads((tmp_path / "q2" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2VLForConditionalGeneration"]
    r = subprocess.run([VREASON, "make-demo-model", "--language", "smollm2", "--architecture", "qwen2_vl"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Qwen2.5-VL checkpoint only" in r.stderr


def test_bad_option_exits_cleanly():
    r = subprocess.run([VREASON, "serve", "--vreason-lr", "-1"], capture_output=True, text=True)
    assert r.returncode == 2 and "invalid option" in r.stderr and "Traceback" not in r.stderr


def test_pruning_rates_are_checked_before_anything_starts():
    from vreason.server.lite import PAPER_RATE

    for args, words in ((["--vreason-lite-rate", "1"], "--vreason-lite-rate must be in [0, 1)"),
                        (["--video-pruning-rate", "-0.5"], "--video-pruning-rate must be in [0, 1)"),
                        (["--vreason-lite-rate", "0.5", "--video-pruning-rate", "0.5"], "give one")):
        r = subprocess.run([VREASON, "serve", *args], capture_output=True, text=True)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
    code = ("import argparse; from vreason.server import cli; p = argparse.ArgumentParser();"
            "cli._add_serve_args(p); print(p.parse_args(['--vreason-lite-rate']).vreason_lite_rate)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) == PAPER_RATE  # the flag alone: the paper's rate


def test_serve_defaults_are_the_dataclasses_defaults(monkeypatch):
    import argparse

    from vreason.server import cli
    from vreason.server.api.settings import APISettings
    from vreason.server.engine.config import EngineConfig
    from vreason.server.video import DEFAULT_FPS

    for k in [k for k in os.environ if k.startswith("VREASON_")]:
        monkeypatch.delenv(k)
    p = argparse.ArgumentParser()
    cli._add_serve_args(p)
    a, e, s = p.parse_args([]), EngineConfig(model="m"), APISettings()
    flags = {"max_model_len": a.max_model_len, "max_num_seqs": a.max_num_seqs,
             "dtype": cli.serve_dtype(a.dtype, "/models/Qwen2.5-VL-7B-Instruct"), "seed": a.seed,
             "tensor_parallel_size": a.tensor_parallel_size, "data_parallel_size": a.data_parallel_size,
             "kv_cache_gib": a.kv_cache_gib, "default_fps": a.video_fps, "generation_config": a.generation_config,
             "cap_frames": a.video_frames_over_cap == "cap",
             "vreason_transposed_tail": a.vreason_transposed_tail == "on", "vreason_lite_rate": a.vreason_lite_rate,
             "video_pruning_rate": a.video_pruning_rate}
    assert flags == {k: getattr(e, k) for k in flags}
    assert (a.video_max_frames, a.video_max_pixels, a.video_max_bytes) == (
        e.video_limits.max_frames, e.video_limits.max_pixels, e.video_limits.max_bytes)
    assert a.media_fetch_timeout == e.fetch_policy.total_timeout and a.allowed_media_hosts == ""
    assert (a.max_body_bytes, a.max_queue, a.request_timeout, a.keep_alive_timeout, a.reasoning_split == "on") == (
        s.max_body_bytes, s.max_queue, s.request_timeout, s.keep_alive_timeout, s.reasoning_split)
    assert a.video_fps == DEFAULT_FPS  # one default frame rate: the CLI, the engine and the sampler agree


def test_port_in_use_fails_before_loading_a_model(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # a model path that does not exist: reaching the model would fail differently
        r = subprocess.run([VREASON, "serve", "--model", str(tmp_path / "no-model"), "--port", str(port)],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 4, r.stderr[-2000:]
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr and "address already in use" in r.stderr.lower()
    assert "Traceback" not in r.stderr


def test_demo_models_are_served_in_the_dtype_they_are_built_in(demo_model):
    """vLLM's `auto` serves a float32 checkpoint in bfloat16 on CPU; the embedded demo models default
    to float32 (their documented answers hold there), any other model to auto; --dtype always wins."""
    from vreason.server import cli
    from vreason.server.checkpoints.demo import DEMO_DTYPE

    assert DEMO_DTYPE == "float32"
    assert cli.serve_dtype(None, str(demo_model)) == "float32"
    assert cli.serve_dtype("bfloat16", str(demo_model)) == "bfloat16"
    assert cli.serve_dtype(None, "/models/Qwen2.5-VL-7B-Instruct") == "auto"
