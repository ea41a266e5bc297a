"""Real server processes for end-to-end tests: `vreason serve` on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

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


PORT_TAKEN = "address already in use"
PORT_ATTEMPTS = 3


def launch(command: Callable[[int], list[str]], log: Path, env: dict[str, str], timeout: float,
           what: str) -> tuple[subprocess.Popen, str]:
    """Run `command(port)` on a free loopback port until /health says 200; return (process, url).

    free_port() must release its port before the server binds it, so another process can take it
    in between. A server that exits saying the address is in use is started again on a new port
    (at most PORT_ATTEMPTS times); any other exit, or no health in `timeout` s, fails the test.
    Both servers bind before loading the model, so such a retry costs seconds.
    """
    attempt = 1
    while True:
        port = free_port()
        with open(log, "w") as fh:
            # own process group: a server that never became healthy is killed with its engine processes
            proc = subprocess.Popen(command(port), stdout=fh, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            if wait_healthy(proc, url, log, timeout, what):
                return proc, url
        except pytest.fail.Exception:
            _kill_group(proc)
            if attempt < PORT_ATTEMPTS and PORT_TAKEN in log.read_text().lower():
                print(f"{what}: port {port} was taken before it bound; starting again on another port")
                attempt += 1
                continue
            raise
        _kill_group(proc)
        pytest.fail(f"{what} not healthy in {timeout} s:\n{log.read_text()[-4000:]}")


def start_server(model: Path, media_dir: Path, log: Path, *extra: str, name: str = "demo") -> Server:
    """Start `vreason serve` on a free loopback port and wait until /health says 200."""
    def command(port: int) -> list[str]:
        return [str(VENV_BIN / "vreason"), "serve", "--model", str(model), "--served-model-name", name,
                "--host", "127.0.0.1", "--port", str(port), "--max-num-seqs", "8",
                "--allowed-local-media-path", str(media_dir), "--dtype", "float32", *extra]

    proc, url = launch(command, log, clean_env(), SERVER_START_TIMEOUT, "server")
    return Server(url, proc, log, name)


STOCK_START_TIMEOUT = 600


def start_stock_server(model: Path, media_dir: Path, log: Path, gen_config: Path, limit_mm: str,
                       name: str = "demo") -> tuple[subprocess.Popen, str]:
    """Stock vLLM's OpenAI server (our plugin disabled) on a free loopback port, configured as
    `start_server` configures ours (float32, eager, seed 0); returns (process, url). Stop it with
    `stop_stock_server`."""
    def command(port: int) -> list[str]:
        return [str(VENV_BIN / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
                "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
                "--max-model-len", "4096", "--max-num-seqs", "8", "--seed", "0", "--enforce-eager",
                "--limit-mm-per-prompt", limit_mm, "--allowed-local-media-path", str(media_dir),
                "--trust-request-mm-kwargs", "--generation-config", str(gen_config)]

    env = clean_env(VLLM_PLUGINS="none", VLLM_CPU_KVCACHE_SPACE="1")  # stock model, stock worker
    return launch(command, log, env, STOCK_START_TIMEOUT, "stock vLLM")


def stop_stock_server(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass


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
