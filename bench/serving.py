"""Start `vreason serve` for a benchmark: a free loopback port, wait for /health (bench scripts only)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], output, timeout_s: int) -> tuple[subprocess.Popen, str]:
    """`vreason serve --port <free> *args` (stdout/stderr to `output`); returns (process, base URL)
    once /health answers 200, or exits the benchmark when it dies or stays unhealthy."""
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "vreason"), "serve", "--port", str(port), *args]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # no Triton interpreter
    proc = subprocess.Popen(cmd, stdout=output, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(timeout_s):
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit("server exited during start-up")
        time.sleep(1)
    proc.kill()
    raise SystemExit("server did not become healthy")
