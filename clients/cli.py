"""Client subcommands of `vreason`: eval, report, make-demo-dataset, bench.

`register(subparsers)` adds them to the `vreason` parser (server/cli.py calls it); `main(argv)`
runs them on their own (`python -m vreason.clients.cli ...`). Heavy imports (httpx, tqdm,
matplotlib, OpenCV) happen inside the commands, so `vreason serve --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e.msg}") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _config(cls, args, **named_otherwise):
    """A command's config from the parsed flags named like its fields, plus the ones named (or
    shaped) otherwise."""
    from dataclasses import fields

    values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **named_otherwise})


def cmd_eval(args) -> int:
    """Run (or resume) an evaluation and print its summary tables; exit 1 if some items failed."""
    from vreason.clients.eval.dataset import DatasetError
    from vreason.clients.eval.runner import EvalConfig, run_eval
    from vreason.clients.eval.summary import group_table, summary_table

    mm = {
        k: v
        for k, v in (("fps", args.fps), ("num_frames", args.num_frames), ("max_pixels", args.max_pixels))
        if v is not None
    }
    cfg = _config(EvalConfig, args, modes=("off", "on") if args.compare else (args.mode,),
                  mm_processor_kwargs=mm, timeout_s=args.timeout, progress=not args.no_progress)
    if "off" in cfg.modes and cfg.baseline == "observe" and cfg.max_tokens >= 4096:
        print(
            "warning: with max_tokens >= 4096 the observe-only baseline may update at token 4096",
            file=sys.stderr,
        )
    import httpx

    try:
        summary = run_eval(args.dataset, args.out, cfg)
    except DatasetError as e:
        print(f"vreason eval: {e}", file=sys.stderr)
        return 2
    except httpx.HTTPError as e:  # listing the models failed: a message, not a traceback
        print(f"vreason eval: cannot reach {args.base_url}: {e}", file=sys.stderr)
        return 1
    print(summary_table(summary))
    print()
    print(group_table(summary))
    for note in summary["notes"]:
        print(f"\nnote: {note}")
    print(f"\nresults: {args.out}/results.jsonl, summary: {args.out}/summary.json")
    errors = sum(m["errors"] for m in summary["modes"].values())
    if errors:
        print(
            f"vreason eval: {errors} item(s) failed; run the same command again to retry them",
            file=sys.stderr,
        )
    return 1 if errors else 0


def cmd_report(args) -> int:
    """Write DIR/report.md with PNG plots."""
    from vreason.clients.eval.report import write_report

    try:
        path = write_report(args.dir)
    except FileNotFoundError as e:
        print(f"vreason report: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def cmd_make_demo_dataset(args) -> int:
    """Write the synthetic moving-shapes QA set."""
    from vreason.clients.eval.demo_dataset import make_demo_dataset

    path = make_demo_dataset(args.dir, n=args.n, seed=args.seed)
    print(f"wrote {args.n} items to {path}")
    return 0


def cmd_bench(args) -> int:
    """Run the load generator and print its Markdown table; exit 1 if any request failed."""
    from vreason.clients.bench import BenchConfig, bench_table, run_bench

    cfg = _config(BenchConfig, args, concurrency=tuple(args.concurrency), timeout_s=args.timeout)
    import httpx

    try:
        result = run_bench(cfg)
    except httpx.HTTPError as e:  # model lookup failed: the server is down or not ours
        print(f"vreason bench: cannot reach the server: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"vreason bench: {e}", file=sys.stderr)
        return 2
    print(bench_table(result))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)
    failed = sum(s["errors"] for lvl in result["levels"] for s in lvl["stats"].values())
    return 1 if failed else 0


def register(subparsers) -> None:
    """Add eval, report, make-demo-dataset and bench to an argparse subparsers object.

    Defaults come from the configs the commands build (EvalConfig, BenchConfig) and from
    make_demo_dataset's signature, so they are written once.
    """
    import inspect

    from vreason.clients.bench import BenchConfig
    from vreason.clients.eval.demo_dataset import make_demo_dataset
    from vreason.clients.eval.runner import EvalConfig

    fmt = argparse.ArgumentDefaultsHelpFormatter
    ev, be = EvalConfig(base_url=""), BenchConfig(base_url="")
    demo = inspect.signature(make_demo_dataset).parameters
    p = subparsers.add_parser(
        "eval", help="evaluate a video QA dataset (JSONL) against a server", formatter_class=fmt
    )
    p.add_argument("dataset", help="JSONL rows {id, video, question, options, answer, type}")
    p.add_argument("--base-url", required=True, help="server URL, e.g. http://127.0.0.1:8000 (or .../v1)")
    p.add_argument("--model", default=ev.model, help="model name; default: the first one /v1/models lists")
    p.add_argument(
        "--out", required=True, help="output folder (results.jsonl is appended to: re-runs resume)"
    )
    p.add_argument("--compare", action="store_true", help="run V-Reason off and on, side by side")
    p.add_argument("--mode", choices=["on", "off"], default=ev.modes[0],
                   help="the single mode without --compare")
    p.add_argument(
        "--baseline",
        choices=["observe", "plain"],
        default=ev.baseline,
        help="how 'off' runs: observe = trace entropy with no update (update_every=4096); "
        "plain = vreason false, no trace",
    )
    p.add_argument(
        "--vreason-options",
        type=_json_object,
        default=ev.vreason_options,
        help='extra V-Reason knobs for mode on, e.g. \'{"lr": 0.01, "update_every": 2}\'',
    )
    p.add_argument("--limit", type=_positive, default=ev.limit, help="only the first N items")
    p.add_argument("--concurrency", type=_positive, default=ev.concurrency, help="requests in flight")
    p.add_argument("--max-tokens", type=_positive, default=ev.max_tokens)
    p.add_argument("--temperature", type=float, default=ev.temperature)
    p.add_argument("--top-p", type=float, default=ev.top_p)
    p.add_argument(
        "--video-mode",
        choices=["data", "file"],
        default=ev.video_mode,
        help="send local videos as base64 data URLs or file:// URLs (needs --allowed-local-media-path)",
    )
    p.add_argument(
        "--fps", type=float, default=None, help="mm_processor_kwargs.fps (server default if unset)"
    )
    p.add_argument("--num-frames", type=int, default=None, help="mm_processor_kwargs.num_frames")
    p.add_argument("--max-pixels", type=int, default=None, help="mm_processor_kwargs.max_pixels")
    p.add_argument("--timeout", type=float, default=ev.timeout_s, help="seconds per request")
    p.add_argument("--retries", type=int, default=ev.retries,
                   help="retries on connection errors, 429 and 5xx")
    p.add_argument("--api-key", default=ev.api_key, help="sent as a Bearer token if set")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("report", help="write DIR/report.md with PNG plots from an eval --out DIR")
    p.add_argument("dir")
    p.set_defaults(func=cmd_report)

    p = subparsers.add_parser(
        "make-demo-dataset", help="write a synthetic moving-shapes video QA set to DIR", formatter_class=fmt
    )
    p.add_argument("dir")
    p.add_argument(
        "--n", type=_positive, default=demo["n"].default,
        help="items (tasks cycle: direction, order, count, distance)"
    )
    p.add_argument("--seed", type=int, default=demo["seed"].default)
    p.set_defaults(func=cmd_make_demo_dataset)

    p = subparsers.add_parser(
        "bench", help="load generator: TTFT, TPOT, latency percentiles, tokens/s", formatter_class=fmt
    )
    p.add_argument("--base-url", required=True)
    p.add_argument("--base-url-b", default=be.base_url_b, help="a second server to compare against (arm B)")
    p.add_argument("--model", default=be.model)
    p.add_argument("--model-b", default=be.model_b)
    p.add_argument("--requests", type=_positive, default=be.requests,
                   help="requests per arm and concurrency level")
    p.add_argument("--concurrency", type=_positive, nargs="+", default=list(be.concurrency))
    p.add_argument(
        "--vreason-on",
        action="store_true",
        help="one server: V-Reason off vs on, interleaved; two servers: V-Reason on for B",
    )
    p.add_argument("--vreason-options", type=_json_object, default=be.vreason_options,
                   help="extra V-Reason knobs (JSON)")
    p.add_argument("--max-tokens", type=_positive, default=be.max_tokens)
    p.add_argument("--temperature", type=float, default=be.temperature)
    p.add_argument("--video", default=be.video, help="video file; default: a synthetic clip")
    p.add_argument("--video-mode", choices=["data", "file"], default=be.video_mode)
    p.add_argument("--prompt", default=be.prompt)
    p.add_argument("--warmup", type=int, default=be.warmup, help="uncounted requests per arm first")
    p.add_argument("--timeout", type=float, default=be.timeout_s, help="seconds per request")
    p.add_argument("--out", default=None, help="also write the raw results as JSON here")
    p.set_defaults(func=cmd_bench)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry: `python -m vreason.clients.cli eval ...`."""
    parser = argparse.ArgumentParser(prog="vreason", description="V-Reason client tools")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
