"""The engine's frozen deployment config and its translation into vLLM's engine arguments."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from vreason.server.video import DEFAULT_FPS, FetchPolicy, VideoLimits
from vreason.server.keys import LITE_KEY, POSITIONS_KEY, SLOTS_KEY, TEST_KNOBS_KEY, TRANSPOSED_KEY

from .types import MAX_LOGPROBS

CPU_WORKER = "vreason.server.vllm_ext.worker.VReasonCPUWorker"
GPU_WORKER = "vreason.server.vllm_ext.worker_gpu.VReasonGPUWorker"


@dataclass(frozen=True)
class EngineConfig:
    model: str
    served_model_name: str | None = None
    max_model_len: int = 4096
    max_num_seqs: int = 16
    dtype: str = "auto"
    seed: int = 0
    gpu_memory_utilization: float | None = None
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    kv_cache_gib: int = 1
    limit_videos_per_prompt: int = 1
    allowed_local_media_path: str | None = None
    video_limits: VideoLimits = field(default_factory=VideoLimits)
    fetch_policy: FetchPolicy = field(default_factory=FetchPolicy)
    default_fps: float = DEFAULT_FPS
    enable_prefix_caching: bool = True
    generation_config: str = "auto"
    """vLLM's --generation-config: "auto" (the model's generation_config.json defaults), "vllm"
    (vLLM's neutral defaults) or a directory holding a generation_config.json."""
    max_logprobs: int = MAX_LOGPROBS
    """Most top_logprobs a request may ask for (vLLM's max_logprobs)."""
    cap_frames: bool = True
    """A frame count above video_limits.max_frames is sampled at the cap (False: 400)."""
    enforce_eager: bool = False
    speculative_config: dict | None = None
    """vLLM's --speculative-config, passed through (V-Reason is then unavailable)."""
    attention_backend: str | None = None
    """vLLM's --attention-backend (None: vLLM's choice)."""
    vreason_required: bool = False
    """Refuse to start when V-Reason cannot run on this deployment (`--vreason on`); otherwise
    the server starts with V-Reason disabled, says why, and answers controlled requests 400."""
    vreason_max_controlled: int | None = None
    """Controller slots: controlled sequences (choices) at once. None: max_num_seqs, so every
    running sequence can have one and controlled requests queue like plain ones; fewer: a
    controlled request that does not fit gets 429."""
    vreason_max_video_tokens: int | None = None
    """Controlled positions (video tokens) one request may have; more get 400. None: max_model_len."""
    vreason_transposed_tail: bool = True
    """On CPU with bf16/fp16 weights, keep contiguous transposed copies of layer L's tail linears
    and lm_head (the tail's size again: 1.52 GB at 7B) so that an update step's input gradient
    reads each weight once for all updating rows, not once per row. No effect elsewhere."""
    vreason_lite_rate: float = 0.0
    """V-Reason Lite (server/lite.py): the fraction of every video's tokens pruned before the
    language model, lowest embedding norm first, on every request with a video (0: off)."""
    video_pruning_rate: float = 0.0
    """vLLM's own `--video-pruning-rate` (EVS: drops the tokens most like the previous frame's), for
    comparison with Lite; at most one of the two is set (0: off)."""
    test_knobs: bool = False
    """`--enable-test-knobs`: the workers read requests' test-only knobs (server/controller/knobs.py)."""

    @property
    def name(self) -> str:
        return self.served_model_name or self.model

    @property
    def vreason_slots(self) -> int:
        return self.vreason_max_controlled or self.max_num_seqs

    @property
    def pruning_rate(self) -> float:
        """The fraction of video tokens pruned before the language model (Lite or vLLM's EVS)."""
        return self.vreason_lite_rate or self.video_pruning_rate

    @property
    def vreason_positions(self) -> int:
        return self.vreason_max_video_tokens or self.max_model_len


def engine_args(cfg: EngineConfig):
    """vLLM's AsyncEngineArgs for this deployment (the V-Reason worker named by dotted path)."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.platforms import current_platform

    on_cpu = current_platform.device_type == "cpu"
    if on_cpu:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.kv_cache_gib))
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")  # V-Reason hooks the V1 runner
    kwargs = dict(
        model=cfg.model, served_model_name=[cfg.name], max_model_len=cfg.max_model_len,
        max_num_seqs=cfg.max_num_seqs, dtype=cfg.dtype, seed=cfg.seed,
        # V-Reason observes layer L through its attention impl and vLLM's aux hidden-state
        # outputs, which survive torch.compile and CUDA graphs: vLLM's default compiled mode.
        enforce_eager=cfg.enforce_eager, tensor_parallel_size=cfg.tensor_parallel_size,
        data_parallel_size=cfg.data_parallel_size,
        limit_mm_per_prompt={"video": cfg.limit_videos_per_prompt, "image": 0},
        enable_prefix_caching=cfg.enable_prefix_caching,
        generation_config=cfg.generation_config, max_logprobs=cfg.max_logprobs,
        worker_cls=CPU_WORKER if on_cpu else GPU_WORKER,
        additional_config={SLOTS_KEY: cfg.vreason_slots, POSITIONS_KEY: cfg.vreason_positions,
                           TRANSPOSED_KEY: cfg.vreason_transposed_tail, TEST_KNOBS_KEY: cfg.test_knobs,
                           **({LITE_KEY: cfg.vreason_lite_rate} if cfg.vreason_lite_rate else {})},
        speculative_config=cfg.speculative_config, attention_backend=cfg.attention_backend,
    )
    if cfg.pruning_rate:  # vLLM's processor then writes the kept count of placeholders
        kwargs["video_pruning_rate"] = cfg.pruning_rate
    if cfg.gpu_memory_utilization is not None:
        kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
    return AsyncEngineArgs(**kwargs)
