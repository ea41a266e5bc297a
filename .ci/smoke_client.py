"""Use the containerised server as a client would (called by .ci/container-smoke.sh).

    python .ci/smoke_client.py http://127.0.0.1:PORT

Lists the models, sends one video chat completion through the OpenAI SDK and one with V-Reason on
(with its trace), checks each answer's shape, prints what it saw and exits non-zero on any miss.
The video is the synthetic OpenCV clip of vreason.clients.synth_video; without the project
installed (a small venv with openai, numpy and OpenCV) that module is loaded from its file.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

from openai import OpenAI

ROOT = Path(__file__).resolve().parents[1]
MODEL = "vreason-demo"
MAX_TOKENS = 8
UPDATE_EVERY = 2


def synth_video_url() -> str:
    try:
        from vreason.clients.synth_video import mp4_data_url
    except ImportError:
        spec = importlib.util.spec_from_file_location("synth_video", ROOT / "clients" / "synth_video.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["synth_video"] = module  # dataclasses look their module up here
        spec.loader.exec_module(module)
        mp4_data_url = module.mp4_data_url
    return mp4_data_url()


def check(ok: bool, what: str) -> None:
    if not ok:
        sys.exit(f"smoke client: FAILED: {what}")


def main() -> None:
    base = sys.argv[1].rstrip("/")
    client = OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=300)
    ids = [m.id for m in client.models.list().data]
    check(ids == [MODEL], f"/v1/models lists {ids}, expected [{MODEL!r}]")
    print(f"models: {ids}")

    messages = [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": synth_video_url()}},
        {"type": "text", "text": "Which way does the red square move?"}]}]

    t0 = time.monotonic()
    plain = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=MAX_TOKENS,
                                           temperature=0)
    n = plain.usage.completion_tokens
    check(plain.object == "chat.completion" and plain.model == MODEL, f"plain reply: {plain}")
    check(1 <= n <= MAX_TOKENS and isinstance(plain.choices[0].message.content, str),
          f"plain reply tokens/content: {plain.usage}, {plain.choices[0].message}")
    print(f"plain video chat: {time.monotonic() - t0:.1f} s, prompt {plain.usage.prompt_tokens} tokens, "
          f"{n} generated, finish {plain.choices[0].finish_reason}")

    t0 = time.monotonic()
    vr = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=MAX_TOKENS, temperature=0,
        extra_body={"vreason": {"enabled": True, "trace": True, "update_every": UPDATE_EVERY}})
    n = vr.usage.completion_tokens
    trace = (vr.model_extra or {}).get("vreason")
    check(isinstance(trace, dict), f"V-Reason reply has no trace: {vr}")
    check(len(trace["steps"]) == n, f"{len(trace['steps'])} trace rows for {n} tokens")
    # An update is due at every t % update_every == 0 (t = 1..n); each is applied or reported skipped.
    due = n // UPDATE_EVERY
    check(trace["updates"] + trace["skipped_updates"] == due,
          f"updates {trace['updates']} + skipped {trace['skipped_updates']} != {due} due")
    print(f"V-Reason video chat: {time.monotonic() - t0:.1f} s, {n} generated, "
          f"updates {trace['updates']}, skipped {trace['skipped_updates']}, peak step {trace['peak_step']}")


if __name__ == "__main__":
    main()
