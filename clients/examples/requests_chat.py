"""Ask a question about a video with plain `requests` (no SDK): POST /v1/chat/completions.

    python clients/examples/requests_chat.py --base-url http://127.0.0.1:8000 --model vreason-demo \
        --video clip.mp4
"""

import argparse
import base64

import requests


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", default="vreason-demo")
    ap.add_argument("--video", required=True, help="a local video file (sent inline as a data URL)")
    ap.add_argument("--question", default="What happens in this video?")
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()

    with open(args.video, "rb") as fh:
        video = "data:video/mp4;base64," + base64.b64encode(fh.read()).decode()
    body = {
        "model": args.model,
        "max_tokens": args.max_tokens,
        "temperature": 0,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "video_url", "video_url": {"url": video}},
                    {"type": "text", "text": args.question},
                ],
            }
        ],
        "mm_processor_kwargs": {"fps": 2},  # frames sampled per second of video
    }
    r = requests.post(
        args.base_url.rstrip("/").removesuffix("/v1") + "/v1/chat/completions", json=body, timeout=300
    )
    if r.status_code != 200:  # errors come as {"error": {"message", "type", "param", "code"}}
        raise SystemExit(f"HTTP {r.status_code}: {r.json()['error']['message']}")
    data = r.json()
    message = data["choices"][0]["message"]
    if message.get("reasoning"):  # <think>...</think> text, split off by the server
        print("reasoning:", message["reasoning"])
    print("answer:", message["content"])
    print("finish_reason:", data["choices"][0]["finish_reason"])
    print("usage:", data["usage"])


if __name__ == "__main__":
    main()
