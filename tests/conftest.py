"""Shared fixtures: the demo model (built once per session) and a real `vreason serve` on loopback
(started by tests/helpers/servers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.clips import LONG_CLIP, SHORT_CLIP
from tests.helpers.servers import Server, start_server, stop_server


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory) -> Path:
    from vreason.server.checkpoints.demo import ensure_demo_model

    cache = os.environ.get("VREASON_CACHE")
    return ensure_demo_model(Path(cache) if cache else tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def qwen2_vl_model(tmp_path_factory) -> Path:
    """The tiny random Qwen2-VL checkpoint (same tokenizer and text widths as the demo model)."""
    from vreason.server.checkpoints.demo import ensure_demo_model

    cache = os.environ.get("VREASON_CACHE")
    return ensure_demo_model(Path(cache) if cache else tmp_path_factory.mktemp("cache"), architecture="qwen2_vl")


@pytest.fixture(scope="session")
def qwen3_vl_model(tmp_path_factory) -> Path:
    """The tiny random Qwen3-VL dense checkpoint (same tokenizer and text widths as the demo model)."""
    from vreason.server.checkpoints.demo import ensure_demo_model

    cache = os.environ.get("VREASON_CACHE")
    return ensure_demo_model(Path(cache) if cache else tmp_path_factory.mktemp("cache"), architecture="qwen3_vl")


@pytest.fixture(scope="session")
def smollm2_model(tmp_path_factory) -> Path:
    """The served default (SmolLM2 grafted into Qwen2.5-VL): slow to build, for its own tests only."""
    from vreason.server.checkpoints.smollm2 import ensure_smollm2_model

    cache = os.environ.get("VREASON_CACHE")
    return ensure_smollm2_model(Path(cache) if cache else tmp_path_factory.mktemp("cache"), progress=lambda m: None)


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    from vreason.clients.synth_video import write_moving_shapes_mp4

    d = tmp_path_factory.mktemp("media")
    write_moving_shapes_mp4(d / SHORT_CLIP)  # 2 s: samples to 4 frames = 2 temporal patches
    # 8 s at 2 fps: samples to 16 frames = 8 temporal patches, where the position of the text
    # after the video depends on the temporal axis (see tests/reference/eager_vreason.py)
    write_moving_shapes_mp4(d / LONG_CLIP, num_frames=16, fps=2.0)
    return d


@pytest.fixture(scope="session")
def server(demo_model, media_dir, tmp_path_factory) -> Server:
    s = start_server(demo_model, media_dir, tmp_path_factory.mktemp("server") / "server.log", "--enable-test-knobs")
    yield s
    stop_server(s)


@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
