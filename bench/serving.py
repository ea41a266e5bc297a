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


def wait_healthy(proc: subprocess.Popen, url: str, timeout_s: int, what: str = "server") -> bool:
    """Poll `url`/health once a second: True at 200, False if `proc` exits first; exits the
    benchmark (killing `proc`) after `timeout_s` s."""
    for _ in range(timeout_s):
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            return False
        time.sleep(1)
    proc.kill()
    raise SystemExit(f"{what} did not become healthy")


def start_server(args: list[str], output, timeout_s: int) -> tuple[subprocess.Popen, str]:
    """`vreason serve --port <free> *args` (stdout/stderr to `output`); returns (process, base URL)
    once /health answers 200, or exits the benchmark when it dies or stays unhealthy. A port taken
    between choosing and binding it (the server exits at once with EXIT_CANNOT_LISTEN) is chosen
    again, at most 3 times."""
    from vreason.server.cli import EXIT_CANNOT_LISTEN

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # no Triton interpreter
    for _ in range(3):
        port = free_port()
        cmd = [str(Path(sys.executable).parent / "vreason"), "serve", "--port", str(port), *args]
        proc = subprocess.Popen(cmd, stdout=output, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        if wait_healthy(proc, url, timeout_s):
            return proc, url
        if proc.returncode != EXIT_CANNOT_LISTEN:
            raise SystemExit(f"server exited during start-up (code {proc.returncode})")
    raise SystemExit("no free port could be bound in 3 tries")
