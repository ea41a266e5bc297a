"""EngineClient backed by vLLM's AsyncLLM running in this process (its engine core in children).

Renders the chat template, decodes videos (server/video, off the event loop) into
`(frames, metadata)` pairs for vLLM, turns the request's sampling fields into `SamplingParams`
with vLLM's own chat-request conversion (model generation_config defaults included, as in
`vllm serve`), maps V-Reason options into `SamplingParams.extra_args`, and streams deltas with
logprobs. The deployment config and vLLM's engine arguments are in config.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import asdict, fields, replace

from jinja2 import TemplateError

from vreason.server.keys import DISABLED_KEY, EXTRA_ARGS_KEY, REQUEST_TAG_KEY, TRACE_ADDR_KEY
from vreason.server.lite import ARCHITECTURES as LITE_ARCHITECTURES
from vreason.server.messages import WorkerStats
from vreason.server.video import SamplingSpec, load_video
from vreason.server.video.frames import is_frame_list_url, load_frames, pick_frames, split_frame_list

from .config import EngineConfig, engine_args
from .controlled import SlotBudget, per_choice_outputs, raise_if_failed, video_tokens
from .scheduler_stats import scheduler_stats_logger
from .support import vllm_config_reasons
from .token_texts import token_texts
from .traces import TraceHub
from .types import (ChoiceDelta, EngineClientError, EngineUnavailable, GenerateRequest, ImagePart,
                    Message, PromptLogprob, SamplingOptions, TextPart, TokenLogprob, Usage, VideoPart,
                    VideoUse)

logger = logging.getLogger("vreason.engine")

class VReasonUnavailable(RuntimeError):
    """`--vreason on` on a deployment where V-Reason cannot run: the server refuses to start."""


_SAMPLING_FIELDS = frozenset(f.name for f in fields(SamplingOptions))


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
        self._defaults: dict = {}  # the model's sampling defaults (vLLM's get_diff_sampling_param)
        self._tokenizer = None
        self.vreason_unavailable: tuple[str, ...] = ()
        """Why V-Reason cannot run on this deployment (empty: it can)."""
        self.vreason_adapter = ""  # the worker's V-Reason model class (WorkerStats.adapter)
        self._slots = SlotBudget(cfg.vreason_slots, cfg.vreason_positions, cfg.max_num_seqs, cfg.data_parallel_size,
                                 cfg.pruning_rate)
        self._children: dict[str, list[str]] = {}  # our request id -> its engine requests (controlled)

    async def start(self) -> None:
        """Check the deployment, start vLLM, then read the worker's own checks of the loaded model."""
        from transformers import AutoProcessor
        from vllm.v1.engine.async_llm import AsyncLLM

        self.traces.start()
        try:
            self._processor = AutoProcessor.from_pretrained(self.cfg.model)
        except (OSError, ValueError):  # a text-only model has no processor: its tokenizer renders chats
            from transformers import AutoTokenizer

            self._processor = AutoTokenizer.from_pretrained(self.cfg.model)
        self._refuse_lite(self._processor)
        vllm_config = engine_args(self.cfg).create_engine_config()
        reasons = vllm_config_reasons(vllm_config)
        self._refuse_if_required(reasons)
        if reasons:
            vllm_config.additional_config[DISABLED_KEY] = list(reasons)
        vllm_config.additional_config[TRACE_ADDR_KEY] = self.traces.address
        self._llm = AsyncLLM.from_vllm_config(vllm_config, stat_loggers=[scheduler_stats_logger(self._scheduler)])
        self._defaults = self._llm.model_config.get_diff_sampling_param()
        logger.info("serving %s in %s (--dtype %s), KV cache dtype %s", self.cfg.model,
                    str(self._llm.model_config.dtype).removeprefix("torch."), self.cfg.dtype,
                    vllm_config.cache_config.cache_dtype)
        self._tokenizer = getattr(self._processor, "tokenizer", self._processor)
        logger.info("default sampling parameters (--generation-config %s): %s", self.cfg.generation_config,
                    self._defaults or "vLLM's neutral defaults")
        worker = await self._worker_stats()
        self.vreason_unavailable = tuple(worker.unavailable)
        self.vreason_adapter = worker.adapter
        if self.vreason_unavailable:
            self._refuse_if_required(self.vreason_unavailable)
            logger.warning("V-Reason is DISABLED on this server (plain requests are served; requests asking for "
                           "vreason get 400 vreason_unavailable): %s", "; ".join(self.vreason_unavailable))
        else:
            logger.info("V-Reason available: %d controller slots x %d video tokens, slab %.1f MiB, update "
                        "transients at most %.1f MiB", worker.slab_slots, worker.slab_max_positions,
                        worker.slab_bytes / 2**20, worker.update_transient_bytes_max / 2**20)

    def _refuse_lite(self, processor) -> None:
        """Lite is a server-wide setting that changes every video prompt: where it cannot prune,
        the server does not start (rather than serve every video unpruned)."""
        if not self.cfg.vreason_lite_rate:
            return
        from transformers import AutoConfig

        archs = tuple(getattr(AutoConfig.from_pretrained(self.cfg.model), "architectures", None) or ())
        if not set(archs) & set(LITE_ARCHITECTURES) or not hasattr(processor, "video_processor"):
            message = (f"--vreason-lite-rate {self.cfg.vreason_lite_rate}: V-Reason Lite prunes "
                       f"{', '.join(LITE_ARCHITECTURES)} only, and this model is {', '.join(archs) or 'unknown'}; "
                       "start without --vreason-lite-rate")
            logger.error(message)
            raise VReasonUnavailable(message)

    def _refuse_if_required(self, reasons: tuple[str, ...]) -> None:
        if reasons and self.cfg.vreason_required:
            message = ("V-Reason cannot run on this deployment, and --vreason on requires it: "
                       + "; ".join(reasons) + ". Change the flags named, or start with --vreason off to serve "
                       "with V-Reason disabled.")
            logger.error(message)
            if self._llm is not None:
                self._llm.shutdown()
                self._llm = None
            raise VReasonUnavailable(message)

    async def close(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None
        await self.traces.close()

    def is_ready(self) -> bool:
        return self._llm is not None and not self._llm.errored

    async def _worker_stats(self, drain_step_seconds: bool = False) -> WorkerStats:
        """The worker's V-Reason state, pulled over collective_rpc (the one transport for it)."""
        out = await self._llm.collective_rpc("vreason_stats", kwargs={"drain_step_seconds": drain_step_seconds})
        stats = [WorkerStats.from_dict(s) for s in out]
        return replace(stats[0], step_seconds=[x for s in stats for x in s.step_seconds])

    async def stats(self) -> dict:
        if not self.is_ready():
            raise EngineUnavailable("engine is not running")
        worker = await self._worker_stats()
        return {**worker.shown(), "controlled_slots_admitted": self._slots.admitted,
                "orphan_records": self.traces.orphan_records}

    async def metrics_snapshot(self) -> dict:
        """Scheduler numbers (summed over engines) and the worker's V-Reason stats, with the step
        durations since the last call (None when the engine is not running)."""
        engines = list(self._scheduler.values())
        worker = None
        if self.is_ready():
            try:
                worker = await self._worker_stats(drain_step_seconds=True)
            except Exception:  # noqa: BLE001 - a scrape must not fail with the engine
                logger.exception("could not read the worker's V-Reason stats")
        return {
            "num_running": sum(e["num_running"] for e in engines),
            "num_waiting": sum(e["num_waiting"] for e in engines),
            "kv_cache_usage": max((e["kv_cache_usage"] for e in engines), default=0.0),
            "vreason": worker,
        }

    async def abort(self, request_id: str) -> None:
        if self._llm is not None:
            await self._llm.abort(self._children.get(request_id, [request_id]))

    async def _prompt(self, request: GenerateRequest, usage: Usage) -> dict:
        chat, urls = _chat_for_template(request.messages)  # urls: a URL or a frame-URL list per video
        chat = _developer_as_system(chat, self._processor.chat_template or "")
        if len(urls) > self.cfg.limit_videos_per_prompt:
            raise EngineClientError(
                f"at most {self.cfg.limit_videos_per_prompt} video(s) per request are allowed on this "
                f"server, got {len(urls)}", param="messages", code="too_many_videos")
        try:
            text = self._processor.apply_chat_template(
                chat, add_generation_prompt=request.add_generation_prompt,
                continue_final_message=request.continue_final_message, tokenize=False,
                **request.chat_template_kwargs)
        except (ValueError, TemplateError) as e:  # the template (or transformers) refused these messages
            raise EngineClientError(f"the chat template cannot render this request: {e}",
                                    param="continue_final_message" if request.continue_final_message
                                    else "messages") from e
        prompt: dict = {"prompt": text}
        if urls:
            videos = await self._load_videos(request, urls, usage)
            prompt["multi_modal_data"] = {"video": [(d.frames, d.metadata) for d in videos]}
        return prompt

    async def _load_videos(self, request: GenerateRequest, urls: list, usage: Usage) -> list:
        """Decode each video (a URL, or a list of frame URLs) within the server's caps.

        A frame count above the cap (num_frames, or a longer frame list) is sampled at the cap,
        evenly, and reported in `usage.videos` and the log; with cap_frames off it is a 400
        naming the field the client sent.
        """
        v = request.video
        limits = self.cfg.video_limits
        if v.max_pixels is not None:
            limits = replace(limits, max_pixels=v.max_pixels)
        cap, local, fps = limits.max_frames, self.cfg.allowed_local_media_path, v.fps or self.cfg.default_fps
        jobs, uses = [], []
        for u in urls:
            frame_list = isinstance(u, list)
            asked = min(v.num_frames or len(u), len(u)) if frame_list else v.num_frames
            param = v.num_frames_param if v.num_frames else "messages"
            over = asked is not None and asked > cap
            if over and not self.cfg.cap_frames:
                what = f"num_frames={asked}" if v.num_frames else f"{asked} frames given"
                raise EngineClientError(f"{what} exceeds this server's limit of {cap} frames per video",
                                        param=param, code="invalid_video_sampling")
            n = min(asked, cap) if asked is not None else None
            uses.append((asked if over else v.num_frames, over, param if over else None))
            if frame_list:
                jobs.append(load_frames(pick_frames(u, n), fps=fps, limits=limits, allowed_local_media_path=local))
            else:
                spec = SamplingSpec(fps=None if n else fps, num_frames=n, num_frames_param=v.num_frames_param,
                                    fps_param=v.fps_param)
                jobs.append(load_video(u, spec=spec, limits=limits, allowed_local_media_path=local,
                                       fetch_policy=self.cfg.fetch_policy))
        videos = await asyncio.gather(*jobs)  # a VideoError is a ClientError: answered as it is
        for i, ((asked, over, param), d) in enumerate(zip(uses, videos)):
            lite = None
            if self.cfg.pruning_rate:
                vp = self._processor.video_processor
                lite = (video_tokens(vp, d.frames, self.cfg.pruning_rate), video_tokens(vp, d.frames))
            usage.videos.append(VideoUse(frames=int(d.frames.shape[0]), requested=asked, capped=over, param=param,
                                         lite_tokens=lite))
            if over:
                logger.info("request %s video %d: %d frames asked (%s), above the server's cap: sampled at "
                            "most %d (%d used)", request.request_id, i, asked, param, cap, d.frames.shape[0])
        return videos

    def _max_tokens(self, requested: int | None) -> int | None:
        """vLLM serve's rule (get_max_tokens) without the prompt length, which the engine applies
        itself for None: the request's value, else the model's default; a generation_config
        directory's max_new_tokens caps both."""
        default = self._defaults.get("max_tokens")
        cap = default if self.cfg.generation_config not in ("auto", "vllm") else None
        values = [x for x in (requested if requested is not None else default, cap) if x is not None]
        return min(values) if values else None

    def _sampling_params(self, request: GenerateRequest):
        """SamplingParams from vLLM's own ChatCompletionRequest.to_sampling_params, so each field
        and each model default means exactly what it means on `vllm serve`."""
        from pydantic import ValidationError
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest as VllmChatRequest
        from vllm.exceptions import VLLMValidationError
        from vllm.sampling_params import RequestOutputKind

        s = request.sampling
        sent = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(s).items()
                if v is not None and k != "max_tokens"}
        try:
            vreq = VllmChatRequest.model_validate({"messages": [], **sent})
            params = vreq.to_sampling_params(self._max_tokens(s.max_tokens), self._defaults)
            params.output_kind = RequestOutputKind.DELTA  # what this engine always consumes
        except ValidationError as e:
            err = e.errors()[0] if e.errors() else {}
            # vLLM's own checks of field combinations raise inside its validators, naming the field.
            param = (".".join(str(x) for x in err.get("loc", ()))
                     or getattr(err.get("ctx", {}).get("error"), "parameter", None) or None)
            raise EngineClientError(f"{param}: {err.get('msg', e)}" if param else str(e), param=param) from e
        except (VLLMValidationError, ValueError, TypeError) as e:  # all from the request's own fields
            # vLLM's messages start with the field's name when it gives no parameter.
            param = getattr(e, "parameter", None) or next((f for f in sent if str(e).startswith(f + " ")), None)
            raise EngineClientError(str(e), param=param) from e
        if request.vreason is not None and request.vreason.enabled:
            params.extra_args = {**(params.extra_args or {}), EXTRA_ARGS_KEY: request.vreason.to_dict(),
                                 REQUEST_TAG_KEY: request.request_id}
        return params

    async def generate(self, request: GenerateRequest, usage: Usage) -> AsyncIterator[ChoiceDelta]:
        from vllm.exceptions import VLLMClientError

        if not self.is_ready():
            raise EngineUnavailable("engine is not running")
        controlled = request.vreason is not None and request.vreason.enabled
        if controlled:
            self._slots.check(request, self.vreason_unavailable)
        params = self._sampling_params(request)  # refuse bad sampling fields before decoding videos
        prompt = await self._prompt(request, usage)
        reserved = self._slots.admit(request, prompt, self._processor) if controlled else 0
        n = request.sampling.n
        trace = self.traces.register(request.request_id, n) if controlled else None
        traced = controlled and request.vreason.trace
        counts = [0] * n
        try:
            started = False
            try:
                async for index, out in self._outputs(request, prompt, params):
                    started = True
                    if out.prompt_token_ids is not None:
                        usage.prompt_tokens = len(out.prompt_token_ids)
                        usage.prompt_token_ids = tuple(out.prompt_token_ids)
                    # on the first output; a controlled request with n > 1 gets them once per choice
                    if out.prompt_logprobs is not None and usage.prompt_logprobs is None:
                        usage.prompt_logprobs = _prompt_logprobs(out.prompt_logprobs)
                    for c in out.outputs:
                        i = index if index is not None else c.index
                        counts[i] += len(c.token_ids)
                        usage.completion_tokens = sum(counts)
                        delta = ChoiceDelta(i, c.text, counts[i], c.finish_reason, stop_reason=c.stop_reason,
                                            logprobs=self._logprobs(c, params.logprobs),
                                            token_ids=tuple(c.token_ids),
                                            token_texts=token_texts(self._tokenizer, c.token_ids,
                                                                    params.skip_special_tokens))
                        if trace is not None:
                            if c.finish_reason is not None:
                                end = await trace.wait_end(i, self.is_ready)
                                if end is None:
                                    logger.warning("request %s choice %d: no end of V-Reason trace from the "
                                                   "worker", request.request_id, i)
                                if traced:
                                    delta.trace_summary = trace.summary(i, end)
                            raise_if_failed(trace)
                            if traced:
                                delta.trace_rows = trace.take(i, counts[i])
                        yield delta
            except (ValueError, VLLMClientError) as e:  # vLLM's admission checks (prompt too long, ...)
                if started:
                    raise
                # vLLM names a request field (logit_bias, stop_token_ids, ...) or its own notion
                # ("input_tokens": the prompt, i.e. the messages).
                raise EngineClientError(str(e), param=_fault_param(e, request)) from e
            except (EngineClientError, EngineUnavailable):
                raise
            except Exception as e:
                if self._llm is None or self._llm.errored:  # EngineDeadError and friends
                    raise EngineUnavailable("the inference engine has stopped") from e
                raise
        finally:
            self._slots.release(reserved)
            if trace is not None:
                self.traces.unregister(request.request_id)

    async def _outputs(self, request: GenerateRequest, prompt: dict, params):
        """vLLM's RequestOutputs as (choice index or None, output): a plain request is one engine
        request (vLLM fans n out itself; read the index from the output), a controlled one an
        engine request per choice (controlled.py)."""
        if request.vreason is None or not request.vreason.enabled:
            async for out in self._llm.generate(prompt, params, request.request_id):
                yield None, out
            return
        n = request.sampling.n
        ids = [request.request_id] if n == 1 else [f"{request.request_id}-{i}" for i in range(n)]
        self._children[request.request_id] = ids
        try:
            async for item in per_choice_outputs(self._llm, prompt, params, ids):
                yield item
        finally:
            self._children.pop(request.request_id, None)

    def _logprobs(self, c, num_top: int | None) -> list[TokenLogprob] | None:
        """vLLM serve's chat logprobs for the new tokens of one CompletionOutput.

        vLLM's dict per position holds the sampled token first, then the top-k by rank; like
        `vllm serve` we list the first `num_top` entries of it as top_logprobs.
        """
        if num_top is None or c.logprobs is None:
            return None
        out = []
        for i, token_id in enumerate(c.token_ids):
            step = c.logprobs[i]
            if step is None or token_id not in step:
                token = self._tokenizer.decode(token_id)
                out.append(TokenLogprob(token, -9999.0, tuple(token.encode("utf-8", errors="replace"))))
                continue
            top = tuple(self._token_logprob(tid, lp) for k, (tid, lp) in enumerate(step.items()) if k < num_top)
            out.append(replace(self._token_logprob(token_id, step[token_id], sampled=True), top=top))
        return out

    def _token_logprob(self, token_id: int, lp, sampled: bool = False) -> TokenLogprob:
        token = lp.decoded_token if lp.decoded_token is not None else self._tokenizer.decode(token_id)
        # vLLM gives no bytes for the sampled token when it has no decoded text; the same here.
        raw = token if not sampled else lp.decoded_token
        return TokenLogprob(token, max(lp.logprob, -9999.0),
                            None if raw is None else tuple(raw.encode("utf-8", errors="replace")))


def _prompt_logprobs(positions) -> list[dict[int, PromptLogprob] | None]:
    """vLLM's prompt logprobs as plain values (-inf as -9999.0, as `vllm serve` clamps them)."""
    return [None if pos is None else {tid: PromptLogprob(max(lp.logprob, -9999.0), lp.rank, lp.decoded_token)
                                      for tid, lp in pos.items()} for pos in positions]


def _fault_param(e: Exception, request: GenerateRequest) -> str:
    """The request field a vLLM admission error is about. vLLM names a sampling field
    (logit_bias, stop_token_ids, ...), or its own notion ("input_tokens": the prompt, i.e. the
    messages); its structured-output grammar errors name nothing but come from structured_outputs
    or response_format."""
    name = getattr(e, "parameter", None)
    if name in _SAMPLING_FIELDS:
        return name
    if str(e).startswith("Grammar error"):
        if request.sampling.structured_outputs is not None:
            return "structured_outputs"
        if request.sampling.response_format is not None:
            return "response_format"
    return "messages"


def _developer_as_system(chat: list[dict], template: str) -> list[dict]:
    """vLLM serve's rule for a template without a "developer" role (Qwen2.5-VL's): developer
    messages become system messages, and several system messages are merged into the first,
    their texts joined by blank lines."""
    named = "'developer'" in template or '"developer"' in template
    if named or not any(m["role"] == "developer" for m in chat):
        return chat
    chat = [{**m, "role": "system"} if m["role"] == "developer" else m for m in chat]
    systems = [i for i, m in enumerate(chat) if m["role"] == "system"]
    if systems == [0]:
        return chat

    def text(content) -> str:
        return content if isinstance(content, str) else "\n".join(p["text"] for p in content if "text" in p)
    merged = "\n\n".join(t for i in systems if (t := text(chat[i]["content"])))
    return [{"role": "system", "content": merged}, *(m for m in chat if m["role"] != "system")]


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
