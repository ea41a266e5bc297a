"""V-Reason Lite: how many of a video's tokens a server keeps. No torch, no vLLM: the front end
(admission, usage) and the worker (the model's pruning) both count with `kept_tokens`.

The paper's Lite evicts the 50% of video tokens with low norms from every layer's KV cache after
prefill. vLLM cannot evict a request's KV blocks, so Lite here prunes before the language model:
the prompt gets fewer video placeholders, and the pruned tokens reach no layer's cache and no
prefill or decode attention. Which tokens: the ones whose embedding entering the language model
(the vision merger's output) has the smallest L2 norm, ranked over the whole video
(vllm_ext/lite.py). The count is vLLM's own for video pruning (its processor writes that many
placeholders): at least one frame's worth of tokens is kept.
"""

from __future__ import annotations

PAPER_RATE = 0.5
"""The fraction of video tokens the paper's Lite removes; `--vreason-lite-rate` with no value."""

ARCHITECTURES = ("Qwen2_5_VLForConditionalGeneration",)
"""The architectures Lite prunes (the model class prunes with the norm rule and keeps the full
prompt's M-RoPE positions). Qwen2-VL's vLLM class has no video pruning; Qwen3-VL's puts
timestamp text between frames, whose positions vLLM recomputes by another rule: not done yet."""


def check_rate(rate: float, flag: str = "--vreason-lite-rate") -> float:
    """A valid pruning rate (0: off); ValueError naming `flag` otherwise."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{flag} must be in [0, 1) (the fraction of video tokens removed), got {rate}")
    return rate


def kept_tokens(tokens_per_frame: int, frames: int, rate: float) -> int:
    """Video tokens kept of `frames` temporal patches of `tokens_per_frame` each at `rate`: vLLM's
    count for video pruning (tests/vllm_ext/test_lite.py holds the two equal), all of them at 0."""
    total = tokens_per_frame * frames
    if rate <= 0.0:
        return total
    return max(tokens_per_frame, int(total * (1 - rate)))
