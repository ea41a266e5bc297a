"""Ask a question about a video with the OpenAI Python SDK (non-streaming).

python clients/examples/openai_chat.py --base-url http://127.0.0.1:8000 --model vreason-demo --video clip.mp4
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
    args = ap.parse_args()

    # The server needs no key; the SDK insists on one.
    client = OpenAI(base_url=args.base_url.rstrip("/").removesuffix("/v1") + "/v1", api_key="unused")
    with open(args.video, "rb") as fh:
        video = "data:video/mp4;base64," + base64.b64encode(fh.read()).decode()
    r = client.chat.completions.create(
        model=args.model,
        max_tokens=args.max_tokens,
        temperature=0,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "video_url", "video_url": {"url": video}},
                    {"type": "text", "text": args.question},
                ],
            }
        ],
    )
    # <think>...</think> text comes separately (the server's reasoning split); the SDK keeps it
    # in model_extra since it is not an OpenAI field.
    reasoning = (r.choices[0].message.model_extra or {}).get("reasoning")
    if reasoning:
        print("reasoning:", reasoning)
    print("answer:", r.choices[0].message.content)
    print("finish_reason:", r.choices[0].finish_reason)
    print("usage:", r.usage.model_dump())


if __name__ == "__main__":
    main()
