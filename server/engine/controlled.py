"""Controlled (V-Reason) requests in the front end: what is refused before any engine work, the
controller slots they hold, and their submission as one engine request per choice."""

from __future__ import annotations

import asyncio

from vreason.server.keys import CHOICE_KEY
from vreason.server.lite import kept_tokens
from vreason.server.messages import NO_SLOT

from .types import EngineClientError, GenerateRequest, RequestFailed


def video_tokens(video_processor, frames, lite_rate: float = 0.0) -> int:
    """Video placeholder tokens the model's HF video processor (the one vLLM runs) makes of these
    frames [T, H, W, C]: its own patch count for the frame count and size (each family resizes by
    its own rule: Qwen3-VL's pixel budget covers the whole video), merge x merge patches per token;
    with video pruning (Lite, or vLLM's EVS: the same count), the tokens kept of them (server/lite.py)."""
    t, h, w = int(frames.shape[0]), int(frames.shape[1]), int(frames.shape[2])
    total = video_processor.get_num_of_video_patches(t, h, w, {}) // video_processor.merge_size ** 2
    if not lite_rate:
        return total
    temporal = -(-t // video_processor.temporal_patch_size)  # the processor pads the last patch
    return kept_tokens(total // temporal, temporal, lite_rate)


class SlotBudget:
    """The controller slab's limits as the front end enforces them: `slots` per engine of
    `positions` video tokens each; one slot per controlled choice while it runs."""

    def __init__(self, slots: int, positions: int, max_num_seqs: int, engines: int = 1, lite_rate: float = 0.0):
        self.slots, self.positions, self.max_num_seqs, self.engines = slots, positions, max_num_seqs, engines
        self.lite_rate = lite_rate  # pruning (Lite or EVS) happens before the controller: count the kept tokens
        self.admitted = 0

    def check(self, request: GenerateRequest, unavailable: tuple[str, ...]) -> None:
        """A controlled request this server cannot control is refused before any work (400)."""
        if unavailable:
            raise EngineClientError("V-Reason is not available on this server: " + "; ".join(unavailable),
                                    param="vreason", code="vreason_unavailable")
        n = request.sampling.n
        if n > self.slots:
            raise EngineClientError(f"V-Reason with n={n} needs {n} controller slots, and this server has "
                                    f"{self.slots} (--vreason-max-controlled)", param="n", code="vreason_budget")

    def admit(self, request: GenerateRequest, prompt: dict, processor) -> int:
        """Reserve the request's slots (one per choice), or refuse it: 400 when its video tokens
        can never fit a slot, 429 while the slots are taken. Returns the slots reserved."""
        videos = (prompt.get("multi_modal_data") or {}).get("video", [])
        if request.vreason.targets in ("video", "visual"):
            positions = sum(video_tokens(processor.video_processor, frames, self.lite_rate) for frames, _ in videos)
            if positions > self.positions:
                raise EngineClientError(
                    f"V-Reason controls the request's {positions} video tokens, and this server allows at most "
                    f"{self.positions} per request (--vreason-max-video-tokens): send fewer frames "
                    "(mm_processor_kwargs.num_frames) or smaller ones (max_pixels)", param="messages",
                    code="vreason_budget")
        n = request.sampling.n
        # With a slot for every sequence vLLM runs at once, a request waits in vLLM's queue like
        # any other (bounded by --max-queue); with fewer, the slots are the limit. Each data-
        # parallel engine has its own slab.
        if self.slots < self.max_num_seqs and self.admitted + n > self.slots * self.engines:
            raise EngineClientError(f"all {self.slots} V-Reason controller slots are in use; retry shortly",
                                    param=None, code="vreason_busy", status=429)
        self.admitted += n
        return n

    def release(self, n: int) -> None:
        self.admitted -= n


def raise_if_failed(trace) -> None:
    """A controller that failed ends its whole request with an error (never a quiet 200)."""
    end = trace.failure
    if end is None:
        return
    what = "could not get a controller slot" if end.code == NO_SLOT else "failed"
    raise RequestFailed(f"V-Reason {what} for this request (choice {end.choice}, at step {end.steps + 1}): "
                        f"{end.error}. Other requests are not affected.", code=end.code)


async def per_choice_outputs(llm, prompt: dict, params, ids: list[str]):
    """(choice index, RequestOutput) of one engine request per choice, merged as they come. Each
    carries its index for the worker, so V-Reason records name their choice explicitly; seeds
    follow vLLM's own rule for n > 1 (seed + index)."""
    n = len(ids)
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, rid: str) -> None:
        child = params.clone()
        child.n = 1
        if params.seed is not None and n > 1:
            child.seed = params.seed + i
        child.extra_args = {**(params.extra_args or {}), CHOICE_KEY: i}
        try:
            async for out in llm.generate(prompt, child, rid):
                await queue.put((i, out))
        except BaseException as e:  # noqa: BLE001 - handed to the reader
            await queue.put((i, e))
            return
        await queue.put((i, None))

    tasks = [asyncio.ensure_future(pump(i, rid)) for i, rid in enumerate(ids)]
    try:
        left = n
        while left:
            i, item = await queue.get()
            if item is None:
                left -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
