"""How evenly a long stream's chunks reach the client: stock vLLM's OpenAI server vs this one.

Starts stock vLLM (our plugin disabled) and then `vreason serve` on the demo model (float32,
loopback), sends one 2000-token greedy stream at a time (`ignore_eos`) about a short clip, reads
it with a raw socket (no client library between the server and the clock), and prints per stream
when it ended, when its 4th event arrived and its three longest gaps between arrivals. On a
2-core machine vLLM's engine core can hold chunks back for seconds; this shows whether ours adds
to it (V-Reason off and on).

    .venv/bin/python bench/stream_stalls.py [--tokens 2000] [--streams 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from serving import free_port, start_server, wait_healthy  # bench/serving.py: a script's own folder is on sys.path


def start_stock(model: Path, media: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}, "VLLM_PLUGINS": "none",
           "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
                             "--served-model-name", "bench", "--port", str(port), "--host", "127.0.0.1",
                             "--dtype", "float32", "--max-model-len", "4096", "--allowed-local-media-path",
                             str(media)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    if not wait_healthy(proc, url, 600, "stock vLLM"):
        raise SystemExit("stock vLLM exited during start-up")
    return proc, url


def one_stream(url: str, body: bytes) -> tuple[float, float, list[tuple[float, float, int]]]:
    """(end s, 4th event s, three longest gaps as (gap s, at s, events before it))."""
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body)
    t0, arrivals, events = time.monotonic(), [], 0
    while True:
        data = s.recv(65536)
        if not data:
            break
        events += data.count(b"data:")
        arrivals.append((time.monotonic() - t0, events))
        if b"[DONE]" in data:
            break
    s.close()
    gaps = sorted(((b[0] - a[0], a[0], a[1]) for a, b in zip(arrivals, arrivals[1:])), reverse=True)[:3]
    return arrivals[-1][0], next(t for t, n in arrivals if n >= 4), gaps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--streams", type=int, default=3)
    args = ap.parse_args()
    from vreason.clients.synth_video import write_moving_shapes_mp4
    from vreason.server.checkpoints.demo import ensure_demo_model

    model = ensure_demo_model(Path(os.environ.get("VREASON_CACHE", Path.home() / ".cache" / "vreason")))
    media = Path(tempfile.mkdtemp(prefix="vreason-stalls-"))
    write_moving_shapes_mp4(media / "clip.mp4")

    def body(vreason: bool) -> bytes:
        return json.dumps({"model": "bench", "max_tokens": args.tokens, "stream": True, "temperature": 0,
                           "ignore_eos": True, **({"vreason": {"update_every": 1}} if vreason else {}),
                           "messages": [{"role": "user", "content": [
                               {"type": "video_url", "video_url": {"url": f"file://{media / 'clip.mp4'}"}},
                               {"type": "text", "text": "What moves?"}]}]}).encode()

    print(f"| server | stream | end (s) | 4th event (s) | longest gaps (s, at s, events before) |\n|---|---|---|---|---|")
    runs = [("stock vLLM", lambda: start_stock(model, media), [False]),
            ("vreason serve", lambda: start_server(["--model", str(model), "--served-model-name", "bench",
                                                    "--dtype", "float32", "--allowed-local-media-path", str(media)],
                                                   subprocess.DEVNULL, 600), [False, True])]
    for name, start, modes in runs:
        proc, url = start()
        try:
            for vreason in modes:
                for i in range(args.streams):
                    end, fourth, gaps = one_stream(url, body(vreason))
                    label = f"{name}{' V-Reason on' if vreason else ''}"
                    print(f"| {label} | {i} | {end:.2f} | {fourth:.2f} | "
                          f"{[(round(g, 2), round(a, 2), n) for g, a, n in gaps]} |", flush=True)
        finally:
            proc.terminate()
            proc.wait(60)


if __name__ == "__main__":
    main()
