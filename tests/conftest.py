"""Shared fixtures: the demo model (built once per session) and a real `vreason serve` on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers.clips import LONG_CLIP, SHORT_CLIP

VENV_BIN = Path(sys.executable).parent
SERVER_START_TIMEOUT = 300


def clean_env(**extra: str) -> dict[str, str]:
    """Environment for engine subprocesses: no Triton interpreter (kernel tests set it)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory) -> Path:
    from vreason.server.demo_model import ensure_demo_model

    cache = os.environ.get("VREASON_CACHE")
    return ensure_demo_model(Path(cache) if cache else tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def smollm2_model(tmp_path_factory) -> Path:
    """The served default (SmolLM2 grafted into Qwen2.5-VL): slow to build, for its own tests only."""
    from vreason.server.smollm2_model import ensure_smollm2_model

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url: str, proc: subprocess.Popen, log: Path, model: str):
        self.url, self.proc, self.log, self.model = url, proc, log, model

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/vreason/stats", timeout=30).json()

    def wait_idle(self, timeout: float = 20.0) -> dict:
        """Wait until no controller slot is in use (finished requests are freed next step)."""
        deadline = time.time() + timeout
        while True:
            s = self.stats()
            if s["active_slots"] == 0 or time.time() > deadline:
                return s
            time.sleep(0.2)


def start_server(model: Path, media_dir: Path, log: Path, *extra: str, name: str = "demo") -> Server:
    """Start `vreason serve` on a free loopback port and wait until /health says 200."""
    port = _free_port()
    cmd = [str(VENV_BIN / "vreason"), "serve", "--model", str(model), "--served-model-name", name,
           "--host", "127.0.0.1", "--port", str(port), "--max-num-seqs", "8",
           "--allowed-local-media-path", str(media_dir), "--dtype", "float32", *extra]
    with open(log, "w") as fh:
        # own process group: a server that never became healthy is killed with its engine processes
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=clean_env(), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + SERVER_START_TIMEOUT
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return Server(url, proc, log, name)
        except httpx.HTTPError:
            pass
        time.sleep(1)
    _kill_group(proc)
    pytest.fail(f"server not healthy in {SERVER_START_TIMEOUT}s:\n{log.read_text()[-4000:]}")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(30)


def stop_server(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(60)
    except subprocess.TimeoutExpired:
        _kill_group(server.proc)


@pytest.fixture(scope="session")
def server(demo_model, media_dir, tmp_path_factory) -> Server:
    s = start_server(demo_model, media_dir, tmp_path_factory.mktemp("server") / "server.log", "--enable-test-knobs")
    yield s
    stop_server(s)


@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
