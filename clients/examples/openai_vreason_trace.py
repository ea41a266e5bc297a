"""V-Reason options per request through the OpenAI SDK's `extra_body`, and the returned trace:
`updates`, `skipped_updates`, `peak_step` and one row per generated token
(`entropy`, `ema`, `alpha`, `updated`).

    python clients/examples/openai_vreason_trace.py --base-url http://127.0.0.1:8000 --model vreason-demo \
        --video clip.mp4 --lr 0.01 --update-every 2 --save-trace trace.json
"""

import argparse
import base64
import json

from openai import OpenAI


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", default="vreason-demo")
    ap.add_argument("--video", required=True)
    ap.add_argument("--question", default="Which way does the red square move?")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.01, help="Adam learning rate on the value offsets")
    ap.add_argument("--steps", type=int, default=1, help="Adam steps per update")
    ap.add_argument("--update-every", type=int, default=2, help="update every N generated tokens")
    ap.add_argument("--beta", type=float, default=0.98, help="EMA factor of the entropy")
    ap.add_argument("--save-trace", default=None, help="write the whole trace object to this JSON file")
    args = ap.parse_args()

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
        extra_body={
            "vreason": {
                "enabled": True,
                "trace": True,
                "lr": args.lr,
                "steps": args.steps,
                "update_every": args.update_every,
                "beta": args.beta,
            }
        },
    )
    trace = r.model_extra["vreason"]  # top-level field the SDK keeps in model_extra
    print("reasoning:", (r.choices[0].message.model_extra or {}).get("reasoning"))
    print("answer:", r.choices[0].message.content)
    print(f"updates: {trace['updates']}  skipped: {trace['skipped_updates']}", end="  ")
    print(f"EMA peak at step: {trace['peak_step']}")
    print(" step  entropy      ema  alpha  updated")
    for t, s in enumerate(trace["steps"][:12], start=1):
        ent = "nan" if s["entropy"] is None else f"{s['entropy']:.3f}"  # null marks a non-finite value
        ema = "nan" if s["ema"] is None else f"{s['ema']:.3f}"
        print(f"{t:5d} {ent:>8} {ema:>8} {s['alpha']:+6.0f}  {'yes' if s['updated'] else ''}")
    if len(trace["steps"]) > 12:
        print(f"  ... {len(trace['steps']) - 12} more rows")
    if args.save_trace:
        with open(args.save_trace, "w") as fh:
            json.dump(trace, fh)
        print("trace saved to", args.save_trace)


if __name__ == "__main__":
    main()
