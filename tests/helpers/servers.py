"""Real server processes for end-to-end tests: `vreason serve` on a free loopback port."""

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

VENV_BIN = Path(sys.executable).parent
SERVER_START_TIMEOUT = 300


def clean_env(**extra: str) -> dict[str, str]:
    """Environment for engine subprocesses: no Triton interpreter (kernel tests set it)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(extra)
    return env


def free_port() -> int:
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


def wait_healthy(proc: subprocess.Popen, url: str, log: Path, timeout: float, what: str) -> bool:
    """Poll `url`/health until 200 (True) or `timeout` s pass (False); fail the test if `proc` exits."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(1)
    return False


def start_server(model: Path, media_dir: Path, log: Path, *extra: str, name: str = "demo") -> Server:
    """Start `vreason serve` on a free loopback port and wait until /health says 200."""
    port = free_port()
    cmd = [str(VENV_BIN / "vreason"), "serve", "--model", str(model), "--served-model-name", name,
           "--host", "127.0.0.1", "--port", str(port), "--max-num-seqs", "8",
           "--allowed-local-media-path", str(media_dir), "--dtype", "float32", *extra]
    with open(log, "w") as fh:
        # own process group: a server that never became healthy is killed with its engine processes
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=clean_env(), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    if wait_healthy(proc, url, log, SERVER_START_TIMEOUT, "server"):
        return Server(url, proc, log, name)
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
