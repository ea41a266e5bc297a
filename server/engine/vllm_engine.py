"""EngineClient backed by vLLM's AsyncLLM running in this process (its engine core in children).

Renders the chat template, decodes videos (server/video, off the event loop) into
`(frames, metadata)` pairs for vLLM, maps V-Reason options into `SamplingParams.extra_args`, and
streams deltas. The V-Reason worker is named by dotted path; this module never imports it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

from vreason.server.controller.params import EXTRA_ARGS_KEY, REQUEST_TAG_KEY
from vreason.server.video import FetchPolicy, SamplingSpec, VideoError, VideoLimits, load_video
from vreason.server.video.frames import is_frame_list_url, load_frames, split_frame_list

from .scheduler_stats import scheduler_stats_logger
from .traces import TraceHub
from .types import (ChoiceDelta, EngineClientError, EngineUnavailable, GenerateRequest, ImagePart, Message,
                    TextPart, Usage, VideoPart)

logger = logging.getLogger("vreason.engine")

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
    default_fps: float = 2.0
    enable_prefix_caching: bool = True
    enforce_eager: bool = False

    @property
    def name(self) -> str:
        return self.served_model_name or self.model


def _engine_args(cfg: EngineConfig):
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
        worker_cls=CPU_WORKER if on_cpu else GPU_WORKER,
    )
    if cfg.gpu_memory_utilization is not None:
        kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
    return AsyncEngineArgs(**kwargs)


class VllmEngine:
    """The production EngineClient."""

    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        self.model_name = cfg.name
        self.max_model_len = cfg.max_model_len
        self.traces = TraceHub()
        self._llm = None
        self._processor = None
        self._scheduler: dict[int, dict] = {}

    async def start(self) -> None:
        from transformers import AutoProcessor
        from vllm.v1.engine.async_llm import AsyncLLM

        self.traces.start()
        self._processor = AutoProcessor.from_pretrained(self.cfg.model)
        self._llm = AsyncLLM.from_engine_args(_engine_args(self.cfg),
                                              stat_loggers=[scheduler_stats_logger(self._scheduler)])

    async def close(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None
        await self.traces.close()

    def is_ready(self) -> bool:
        return self._llm is not None and not self._llm.errored

    async def stats(self) -> dict:
        if not self.is_ready():
            raise EngineUnavailable("engine is not running")
        return (await self._llm.collective_rpc("vreason_stats"))[0]

    def metrics_snapshot(self) -> dict:
        """Scheduler numbers (summed over engines) and the workers' latest V-Reason stats."""
        engines = list(self._scheduler.values())
        steps, self.traces.step_seconds = self.traces.step_seconds, []
        return {
            "num_running": sum(e["num_running"] for e in engines),
            "num_waiting": sum(e["num_waiting"] for e in engines),
            "kv_cache_usage": max((e["kv_cache_usage"] for e in engines), default=0.0),
            "vreason": self.traces.stats, "step_seconds": steps,
        }

    async def abort(self, request_id: str) -> None:
        if self._llm is not None:
            await self._llm.abort(request_id)

    async def _prompt(self, request: GenerateRequest) -> dict:
        chat, urls = _chat_for_template(request.messages)  # urls: a URL or a frame-URL list per video
        if len(urls) > self.cfg.limit_videos_per_prompt:
            raise EngineClientError(
                f"at most {self.cfg.limit_videos_per_prompt} video(s) per request are allowed on this "
                f"server, got {len(urls)}", param="messages", code="too_many_videos")
        text = self._processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False,
                                                   **request.chat_template_kwargs)
        prompt: dict = {"prompt": text}
        if urls:
            v = request.video
            limits = self.cfg.video_limits
            if v.max_pixels is not None:
                limits = replace(limits, max_pixels=v.max_pixels)
            spec = SamplingSpec(fps=None if v.num_frames else (v.fps or self.cfg.default_fps),
                                num_frames=v.num_frames)
            local = self.cfg.allowed_local_media_path
            try:
                videos = await asyncio.gather(*(
                    load_frames(u, fps=v.fps or self.cfg.default_fps, limits=limits, allowed_local_media_path=local)
                    if isinstance(u, list) else
                    load_video(u, spec=spec, limits=limits, allowed_local_media_path=local,
                               fetch_policy=self.cfg.fetch_policy) for u in urls))
            except VideoError as e:
                raise EngineClientError(e.message, param=e.param, code=e.code, status=e.status) from e
            prompt["multi_modal_data"] = {"video": [(d.frames, d.metadata) for d in videos]}
        return prompt

    def _sampling_params(self, request: GenerateRequest):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        s = request.sampling
        extra = None
        if request.vreason is not None and request.vreason.enabled:
            extra = {EXTRA_ARGS_KEY: request.vreason.to_dict(), REQUEST_TAG_KEY: request.request_id}
        return SamplingParams(
            n=s.n, max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p, seed=s.seed,
            stop=list(s.stop) or None, ignore_eos=s.ignore_eos, output_kind=RequestOutputKind.DELTA, extra_args=extra)

    async def generate(self, request: GenerateRequest, usage: Usage) -> AsyncIterator[ChoiceDelta]:
        from vllm.exceptions import VLLMClientError

        if not self.is_ready():
            raise EngineUnavailable("engine is not running")
        prompt = await self._prompt(request)
        params = self._sampling_params(request)
        traced = request.vreason is not None and request.vreason.enabled and request.vreason.trace
        trace = self.traces.register(request.request_id, request.sampling.n) if traced else None
        counts = [0] * request.sampling.n
        try:
            stream = self._llm.generate(prompt, params, request.request_id)
            started = False
            try:
                async for out in stream:
                    started = True
                    if out.prompt_token_ids is not None:
                        usage.prompt_tokens = len(out.prompt_token_ids)
                    for c in out.outputs:
                        counts[c.index] += len(c.token_ids)
                        usage.completion_tokens = sum(counts)
                        delta = ChoiceDelta(c.index, c.text, counts[c.index], c.finish_reason)
                        if trace is not None:
                            if c.finish_reason is not None:
                                await trace.wait_for(c.index, counts[c.index], timeout=5.0)
                            delta.trace_rows = trace.take(c.index, counts[c.index])
                        yield delta
            except (ValueError, VLLMClientError) as e:  # vLLM's admission checks (prompt too long, ...)
                if started:
                    raise
                raise EngineClientError(str(e), param="messages") from e
            except Exception as e:
                if self._llm is None or self._llm.errored:  # EngineDeadError and friends
                    raise EngineUnavailable("the inference engine has stopped") from e
                raise
        finally:
            if trace is not None:
                self.traces.unregister(request.request_id)


def _chat_for_template(messages: tuple[Message, ...]) -> tuple[list[dict], list[str | list[str]]]:
    """Chat dicts for the template plus one media item per video: a URL, or a list of frame URLs
    (consecutive image parts of one message, or vLLM's data:video/jpeg frame-list URL)."""
    chat, media = [], []
    for m in messages:
        if isinstance(m.content, str):
            chat.append({"role": m.role, "content": m.content})
            continue
        parts: list[dict] = []
        for p in m.content:
            if isinstance(p, TextPart):
                parts.append({"type": "text", "text": p.text})
            elif isinstance(p, ImagePart) and parts and parts[-1].get("frames") is not None:
                parts[-1]["frames"].append(p.url)  # another frame of the same video
            else:
                parts.append({"type": "video", "frames": [p.url] if isinstance(p, ImagePart) else None})
                media.append(p.url if isinstance(p, VideoPart) else parts[-1]["frames"])
        chat.append({"role": m.role, "content": [{k: v for k, v in d.items() if k != "frames"} for d in parts]})
    return chat, [split_frame_list(u) if isinstance(u, str) and is_frame_list_url(u) else u for u in media]
