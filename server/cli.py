"""`vreason` command line: serve, make-demo-model. The only reader of argv and environment.

Every `serve` flag can also be set by an environment variable VREASON_<FLAG> (dashes become
underscores, e.g. VREASON_MAX_MODEL_LEN=8192); a flag on the command line wins.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
from dataclasses import MISSING, fields
from pathlib import Path

from vreason.server.checkpoints.demo import ARCHITECTURES as DEMO_ARCHITECTURES
from vreason.server.checkpoints.demo import DEFAULT_ARCHITECTURE

logger = logging.getLogger("vreason")


def _env(name: str, default):
    raw = os.environ.get("VREASON_" + name.upper().replace("-", "_"))
    if raw is None:
        return default
    if isinstance(default, bool):
        return raw.lower() in ("1", "true", "yes", "on")
    return type(default)(raw) if default is not None else raw


def default_cache_dir() -> Path:
    return Path(os.environ.get("VREASON_CACHE", Path.home() / ".cache" / "vreason"))


def _field_defaults(cls) -> dict:
    """A dataclass's field defaults (factories called): the flags' defaults live there, not here."""
    return {f.name: f.default if f.default is not MISSING else f.default_factory()
            for f in fields(cls) if f.default is not MISSING or f.default_factory is not MISSING}


def _add_serve_args(p: argparse.ArgumentParser) -> None:
    from vreason.server.api.settings import APISettings
    from vreason.server.controller.params import TARGETS, VReasonParams
    from vreason.server.engine.config import EngineConfig
    from vreason.server.lite import PAPER_RATE

    def add(flag, default, help, **kw):
        name = flag.lstrip("-")
        p.add_argument(flag, default=_env(name, default), help=f"{help} [env VREASON_{name.upper().replace('-', '_')}]", **kw)

    e, s = _field_defaults(EngineConfig), APISettings()
    vl, fp = e["video_limits"], e["fetch_policy"]
    add("--model", None, "model path or name; default: the embedded demo model named by --demo-model (built once)")
    add("--demo-model", "smollm2", "embedded demo model served without --model: 'smollm2' (real small language "
        "model SmolLM2-135M-Instruct, random vision encoder: cannot see the video) or 'random' (tiny, all random)",
        choices=["smollm2", "random"])
    add("--served-model-name", e["served_model_name"],
        "model name clients send; default: the model path, or 'vreason-demo'")
    add("--host", "127.0.0.1", "bind address")
    add("--port", 8000, "port", type=int)
    add("--max-model-len", e["max_model_len"], "context length (prompt + output tokens)", type=int)
    add("--max-num-seqs", e["max_num_seqs"], "requests decoded together in one batch", type=int)
    add("--dtype", None, "model dtype: auto, float32, bfloat16, float16; default: float32 for the embedded demo "
        "models (the dtype they are built and documented in), else auto (vLLM's choice: on CPU, bfloat16 for a "
        "float32 checkpoint)")
    add("--seed", e["seed"], "engine seed", type=int)
    add("--gpu-memory-utilization", e["gpu_memory_utilization"],
        "fraction of device memory for vLLM (on CPU: of RAM)", type=float)
    add("--tensor-parallel-size", e["tensor_parallel_size"],
        "tensor parallel size (V-Reason needs 1)", type=int)
    add("--kv-cache-gib", e["kv_cache_gib"],
        "CPU only: KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE)", type=int)
    add("--limit-mm-per-prompt", json.dumps({"video": e["limit_videos_per_prompt"]}),
        'JSON, e.g. \'{"video": 2}\': videos allowed per request')
    add("--allowed-local-media-path", e["allowed_local_media_path"],
        "directory whose files may be sent as file:// video URLs")
    add("--allowed-media-hosts", ",".join(fp.allowed_hosts),
        "comma-separated hosts (or *.domain) whose http(s) video URLs may be "
        "fetched; private, loopback and metadata addresses are always refused (empty: no fetching)")
    add("--media-allow-private", fp.allow_private,
        "also fetch from private/loopback addresses (closed networks and "
        "tests only: never on a server reachable by untrusted clients)", action="store_true")
    add("--media-fetch-timeout", fp.total_timeout,
        "seconds for one video download, redirects included", type=float)
    add("--video-fps", e["default_fps"],
        "default frame sampling rate (frames per second of video)", type=float)
    add("--video-max-frames", vl.max_frames, "cap on sampled frames per video", type=int)
    add("--video-max-pixels", vl.max_pixels,
        "cap on pixels per sampled frame (resized down to fit)", type=int)
    add("--video-frames-over-cap", "cap" if e["cap_frames"] else "reject",
        "a requested frame count (num_frames, or a frame list) above "
        "--video-max-frames: sample at the cap and say so in the response (cap), or answer 400 (reject)",
        choices=["cap", "reject"])
    add("--video-max-bytes", vl.max_bytes, "cap on an encoded video's size in bytes", type=int)
    add("--generation-config", e["generation_config"],
        "sampling defaults for fields a request does not set, as in vllm "
        "serve: auto (the model's generation_config.json), vllm (vLLM's neutral defaults) or a directory "
        "holding a generation_config.json")
    add("--no-prefix-caching", False, "disable vLLM's prefix caching", action="store_true")
    add("--data-parallel-size", e["data_parallel_size"],
        "vLLM data-parallel engine replicas in this server", type=int)
    add("--enforce-eager", False, "run vLLM eagerly (no torch.compile, no CUDA graphs); the default is "
        "vLLM's compiled mode. Tests pass it where engine start time matters more than step speed",
        action="store_true")
    add("--api-key", s.api_key, "require 'Authorization: Bearer KEY' on every route but /health and /metrics")
    add("--allowed-origins", ",".join(s.allowed_origins), "comma-separated CORS origins (empty: no CORS)")
    add("--max-body-bytes", s.max_body_bytes, "largest request body accepted (413 above)", type=int)
    add("--max-queue", s.max_queue, "chat requests admitted at once, running + waiting (429 above)", type=int)
    add("--request-timeout", s.request_timeout, "seconds before a chat request is aborted (504)", type=float)
    add("--keep-alive-timeout", s.keep_alive_timeout, "seconds an idle HTTP connection stays open (above client "
        "pools' 5 s, so that a reused connection is never one the server is closing)", type=float)
    add("--reasoning-split", "on" if s.reasoning_split else "off",
        "move <think>...</think> text to message.reasoning", choices=["on", "off"])
    add("--log-format", "json", "log lines as JSON objects or plain text", choices=["json", "text"])
    d = VReasonParams()
    add("--vreason", "off", "V-Reason for requests that do not say: on or off. With on, the server also "
        "refuses to start where V-Reason cannot run (with off it starts with V-Reason disabled, says why, and "
        "answers requests that ask for it 400)", choices=["on", "off"])
    add("--vreason-max-controlled", e["vreason_max_controlled"], "controller slots: controlled choices decoded at once, allocated at "
        "start-up; below --max-num-seqs, more get 429 (default: --max-num-seqs: controlled requests queue)", type=int)
    add("--vreason-max-video-tokens", e["vreason_max_video_tokens"], "controlled positions (video tokens) per request, allocated per "
        "slot at start-up; more get 400 (default: --max-model-len)", type=int)
    add("--vreason-transposed-tail", "on" if e["vreason_transposed_tail"] else "off", "on CPU with bf16/fp16 "
        "weights: keep transposed copies of layer L's tail and lm_head (their size again, 1.52 GB at 7B) so "
        "that an update step reads each weight once for all updating rows (off: once per row)",
        choices=["on", "off"])
    add("--vreason-lite-rate", e["vreason_lite_rate"], "V-Reason Lite: prune this fraction of every video's "
        f"tokens (lowest embedding norm first) before the language model, for every request with a video; "
        f"no value: the paper's {PAPER_RATE} (default 0: off; Qwen2.5-VL only)", type=float, nargs="?",
        const=PAPER_RATE)
    add("--video-pruning-rate", e["video_pruning_rate"], "vLLM's own video pruning (EVS: drops the tokens most "
        "like the previous frame's) at this rate, for comparison with --vreason-lite-rate; not both (default 0: off)",
        type=float)
    add("--speculative-config", None, "JSON, vLLM's speculative decoding config (V-Reason is then unavailable)")
    add("--attention-backend", e["attention_backend"], "vLLM's attention backend (e.g. FLASH_ATTN, TRITON_ATTN); "
        "default: vLLM's choice. V-Reason reads the paged cache of CPU_ATTN, FLASH_ATTN and TRITON_ATTN")
    add("--enable-test-knobs", False, "accept the test-only vreason options force_alpha, nan_at_step and "
        "fail_at_step from clients (tests only: never on a server reachable by untrusted clients)",
        action="store_true")
    add("--vreason-lr", d.lr, "default Adam learning rate", type=float)
    add("--vreason-steps", d.steps, "default Adam steps per update", type=int)
    add("--vreason-update-every", d.update_every, "default: update every N generated tokens", type=int)
    add("--vreason-beta", d.beta, "default EMA factor of the entropy", type=float)
    add("--vreason-norm-restore", d.norm_restore, "default norm restore", choices=["token", "none"])
    add("--vreason-apply", d.apply, "default: sample the update step's token from updated logits (now) or not (next)",
        choices=["now", "next"])
    add("--vreason-targets", d.targets, "default controlled positions", choices=list(TARGETS))
    add("--log-level", "info", "log level")


def _vreason_default(args):
    from vreason.server.controller.params import VReasonParams

    return VReasonParams(enabled=args.vreason == "on", lr=args.vreason_lr, steps=args.vreason_steps,
                         update_every=args.vreason_update_every, beta=args.vreason_beta,
                         norm_restore=args.vreason_norm_restore, apply=args.vreason_apply,
                         targets=args.vreason_targets)


EXIT_BAD_OPTION, EXIT_STARTUP_FAILED, EXIT_CANNOT_LISTEN = 2, 3, 4


def listen_socket(host: str, port: int) -> socket.socket:
    """Bind the HTTP socket, not yet listening: connections are refused until the app is up.

    `serve` binds right after checking its options, before the model loads (as vLLM's own server
    does): a port in use fails in a second, not after minutes of loading, and no port the engine
    opens meanwhile can be the same one. SO_REUSEADDR and the address family as uvicorn binds.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def serve(args) -> int:
    """`vreason serve`: check the options, bind the port, load the model, serve until SIGTERM."""
    import uvicorn

    from vreason.server.api.app import create_app
    from vreason.server.controller.params import ParamError
    from vreason.server.checkpoints.demo import ensure_demo_model, is_demo_model
    from vreason.server.checkpoints.smollm2 import LIMITS as SMOLLM2_LIMITS
    from vreason.server.checkpoints.smollm2 import SERVED_NAME as SMOLLM2_NAME
    from vreason.server.checkpoints.smollm2 import ensure_smollm2_model, is_smollm2_model
    from vreason.server.engine.config import EngineConfig
    from vreason.server.engine.vllm_engine import VllmEngine
    from vreason.server.lite import check_rate
    from vreason.server.video import FetchPolicy, VideoLimits

    from vreason.server.api.settings import APISettings
    from vreason.server.logs import setup_logging

    setup_logging(args.log_level, args.log_format)
    try:
        vreason_default = _vreason_default(args)
        settings = APISettings(
            api_key=args.api_key, allowed_origins=tuple(o.strip() for o in args.allowed_origins.split(",") if o.strip()),
            max_body_bytes=args.max_body_bytes, max_queue=args.max_queue, request_timeout=args.request_timeout,
            keep_alive_timeout=args.keep_alive_timeout,
            reasoning_split=args.reasoning_split == "on", test_knobs=args.enable_test_knobs)
        limits = json.loads(args.limit_mm_per_prompt)
        speculative = json.loads(args.speculative_config) if args.speculative_config else None
        for flag in ("vreason_max_controlled", "vreason_max_video_tokens"):
            if getattr(args, flag) is not None and getattr(args, flag) < 1:
                raise ValueError(f"--{flag.replace('_', '-')} must be at least 1")
        check_rate(args.vreason_lite_rate)
        check_rate(args.video_pruning_rate, "--video-pruning-rate")
        if args.vreason_lite_rate and args.video_pruning_rate:
            raise ValueError("--vreason-lite-rate and --video-pruning-rate both prune video tokens: give one")
        video_limits = VideoLimits(max_bytes=args.video_max_bytes, max_frames=args.video_max_frames,
                                   max_pixels=args.video_max_pixels)
        fetch_policy = FetchPolicy(allowed_hosts=tuple(h.strip() for h in args.allowed_media_hosts.split(",")
                                                       if h.strip()), total_timeout=args.media_fetch_timeout,
                                   allow_private=args.media_allow_private)
    except (ParamError, ValueError, TypeError) as e:
        print(f"vreason serve: invalid option: {e}", file=sys.stderr)
        return EXIT_BAD_OPTION
    try:
        sock = listen_socket(args.host, args.port)  # uvicorn closes it when it stops
    except OSError as e:
        print(f"vreason serve: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return EXIT_CANNOT_LISTEN
    model, name = args.model, args.served_model_name
    if model is None and args.demo_model == "smollm2":
        model = str(ensure_smollm2_model(default_cache_dir(), progress=lambda m: print(m, file=sys.stderr)))
        name = name or SMOLLM2_NAME
    elif model is None:
        model = str(ensure_demo_model(default_cache_dir()))
        name = name or "vreason-demo"
    if is_demo_model(model):
        logger.warning("Serving the embedded RANDOM demo model from %s: its answers are meaningless. "
                       "Pass --model to serve a real Qwen2.5-VL checkpoint.", model)
    if is_smollm2_model(model):
        logger.warning("Serving the embedded SmolLM2 demo model from %s: %s", model, SMOLLM2_LIMITS)
    dtype = serve_dtype(args.dtype, model)
    cfg = EngineConfig(
        model=model, served_model_name=name, max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
        dtype=dtype, seed=args.seed, gpu_memory_utilization=args.gpu_memory_utilization,
        tensor_parallel_size=args.tensor_parallel_size, kv_cache_gib=args.kv_cache_gib,
        limit_videos_per_prompt=int(limits.get("video", 1)),
        allowed_local_media_path=args.allowed_local_media_path, video_limits=video_limits,
        fetch_policy=fetch_policy,
        default_fps=args.video_fps, enable_prefix_caching=not args.no_prefix_caching,
        data_parallel_size=args.data_parallel_size, generation_config=args.generation_config,
        cap_frames=args.video_frames_over_cap == "cap", enforce_eager=args.enforce_eager,
        speculative_config=speculative, attention_backend=args.attention_backend,
        vreason_required=args.vreason == "on",
        vreason_max_controlled=args.vreason_max_controlled, vreason_max_video_tokens=args.vreason_max_video_tokens,
        vreason_transposed_tail=args.vreason_transposed_tail == "on", vreason_lite_rate=args.vreason_lite_rate,
        video_pruning_rate=args.video_pruning_rate, test_knobs=settings.test_knobs)
    if settings.test_knobs:
        logger.warning("--enable-test-knobs: clients may send the test-only vreason options (tests only)")
    app = create_app(VllmEngine(cfg), vreason_default=vreason_default, settings=settings)
    # SIGTERM: uvicorn stops accepting, lets in-flight requests finish (up to 30 s), then the
    # lifespan shuts the engine down.
    server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=30,
                                           timeout_keep_alive=settings.keep_alive_timeout,
                                           access_log=False, log_config=None))
    host, port = sock.getsockname()[:2]
    logger.info("HTTP socket bound to %s:%d; the server answers once the engine is up", host, port)
    server.run(sockets=[sock])
    # the lifespan (engine start) failed: uvicorn.run's own exit code for that case
    return 0 if server.started else EXIT_STARTUP_FAILED


def serve_dtype(flag: str | None, model: str) -> str:
    """The dtype to serve `model` in: --dtype when given, else float32 for the embedded demo models
    (the dtype they are built and documented in) and vLLM's `auto` for any other model."""
    from vreason.server.checkpoints.demo import DEMO_DTYPE, is_demo_model
    from vreason.server.checkpoints.smollm2 import is_smollm2_model

    if flag:
        return flag
    return DEMO_DTYPE if is_demo_model(model) or is_smollm2_model(model) else "auto"


def make_demo_model(args) -> int:
    from vreason.server.checkpoints.demo import build_demo_model, ensure_demo_model
    from vreason.server.checkpoints.smollm2 import LIMITS, ensure_smollm2_model

    if args.language == "smollm2" and args.architecture != DEFAULT_ARCHITECTURE:
        print("error: --language smollm2 builds a Qwen2.5-VL checkpoint only (leave --architecture out)",
              file=sys.stderr)
        return 2
    if args.language == "smollm2":
        out = ensure_smollm2_model(args.dir or default_cache_dir(), seed=args.seed)
        print(f"SmolLM2-135M-Instruct in Qwen2.5-VL: {out}\nLimits: {LIMITS}")
    else:
        arch = args.architecture
        out = (build_demo_model(args.dir, seed=args.seed, architecture=arch) if args.dir
               else ensure_demo_model(default_cache_dir(), args.seed, architecture=arch))
        print(f"wrote the tiny random {DEMO_ARCHITECTURES[arch]} demo model to {out}")
    return 0


def _register_client_commands(sub) -> None:
    """eval, report, make-demo-dataset, bench: HTTP clients that live in vreason.clients.

    The console script is the one place that names both sides; the clients never import the
    server, and nothing else in the server imports the clients.
    """
    import importlib.util

    if importlib.util.find_spec("vreason.clients.cli") is None:
        return
    from vreason.clients.cli import register

    register(sub)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vreason", description="V-Reason video QA server on vLLM")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the OpenAI-compatible server",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_serve_args(p)
    p.set_defaults(func=serve)
    p = sub.add_parser("make-demo-model", help="write an embedded demo checkpoint (Qwen2.5-VL, Qwen2-VL or Qwen3-VL)")
    p.add_argument("dir", nargs="?", default=None,
                   help="random: the checkpoint folder; smollm2: the cache folder it goes under "
                        "(default: the cache, $VREASON_CACHE or ~/.cache/vreason, where `serve` finds it)")
    p.add_argument("--language", choices=["random", "smollm2"], default="random",
                   help="random: tiny random model (tests); smollm2: SmolLM2-135M-Instruct as the language "
                        "model (the `serve` default), random vision encoder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--architecture", choices=list(DEMO_ARCHITECTURES), default=DEFAULT_ARCHITECTURE,
                   help="random: the family of the tiny model (Qwen2.5-VL, Qwen2-VL or Qwen3-VL)")
    p.set_defaults(func=make_demo_model)
    _register_client_commands(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
