"""Stream an answer about a video with the OpenAI Python SDK; optionally with V-Reason and its
per-token trace arriving in the same chunks (`choices[i].vreason.steps`).

    python clients/examples/openai_stream.py --base-url http://127.0.0.1:8000 --model vreason-demo \
        --video clip.mp4 --vreason
"""

import argparse
import base64

from openai import OpenAI


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", default="vreason-demo")
    ap.add_argument("--video", required=True)
    ap.add_argument("--question", default="What happens in this video?")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--vreason", action="store_true", help="turn V-Reason on and stream its trace")
    args = ap.parse_args()

    client = OpenAI(base_url=args.base_url.rstrip("/").removesuffix("/v1") + "/v1", api_key="unused")
    with open(args.video, "rb") as fh:
        video = "data:video/mp4;base64," + base64.b64encode(fh.read()).decode()
    stream = client.chat.completions.create(
        model=args.model,
        max_tokens=args.max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},  # a last chunk with the token counts
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "video_url", "video_url": {"url": video}},
                    {"type": "text", "text": args.question},
                ],
            }
        ],
        extra_body={"vreason": {"trace": True}} if args.vreason else None,
    )
    rows, summary, usage = 0, None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            # Thinking text arrives as delta.reasoning (not an OpenAI field: model_extra).
            thought = (choice.delta.model_extra or {}).get("reasoning")
            print((thought or "") + (choice.delta.content or ""), end="", flush=True)
            extra = (choice.model_extra or {}).get("vreason") or {}  # fields the SDK does not model
            rows += len(extra.get("steps", []))
            summary = extra.get("summary", summary)
    print()
    print("usage:", usage.model_dump() if usage else None)
    if args.vreason:
        print(f"trace rows streamed: {rows}; summary: {summary}")


if __name__ == "__main__":
    main()
