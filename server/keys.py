"""The names that wire the front end (server/engine) to vLLM's worker (server/vllm_ext): the
architecture served, environment names, `SamplingParams.extra_args` keys (one request's V-Reason
wiring) and vLLM `additional_config` keys (the deployment's V-Reason settings). No torch, no
vLLM: both sides import this module, neither imports the other.
"""

from __future__ import annotations

ARCHITECTURES = {
    "Qwen2_5_VLForConditionalGeneration": "VReasonQwen2_5_VL",
    "Qwen2VLForConditionalGeneration": "VReasonQwen2_VL",
    "Qwen3VLForConditionalGeneration": "VReasonQwen3_VL",
}
"""The Hugging Face architectures V-Reason serves -> the V-Reason model class the plugin
registers for each (in server/vllm_ext/model.py)."""

UNSUPPORTED_ARCHITECTURES = {
    "Qwen3VLMoeForConditionalGeneration":
        "its last layer's MLP is routed (top-k of many experts) and the differentiable tail has a dense "
        "SwiGLU MLP only",
    "Qwen3_5ForConditionalGeneration":
        "its last full-attention layer gates the attention output (attn * sigmoid(gate)) and uses (1 + w) "
        "RMSNorms, which the differentiable tail does not model yet",
    "Qwen3_5MoeForConditionalGeneration":
        "its last full-attention layer gates the attention output and its MLP is routed (top-k experts plus a "
        "shared expert), neither of which the differentiable tail models yet",
}
"""Architectures users ask for whose layer L the tail cannot differentiate yet -> why (said in the
start-up refusal, /vreason/stats and the 400 `vreason_unavailable`); plain requests are served."""

# Environment names, read where each process starts.
CHECK_ENV = "VREASON_CHECK_OVERLAY"
"""Set to 1 to compare the overlay and the tail with vLLM's own outputs while dV == 0 (tests)."""

# SamplingParams.extra_args keys, one request's V-Reason wiring.
EXTRA_ARGS_KEY = "vreason"
"""The request's V-Reason options (`VReasonParams.to_dict()`)."""
REQUEST_TAG_KEY = "vreason_rid"
"""The front end's request id, echoed back on every channel record of that request."""
CHOICE_KEY = "vreason_choice"
"""The choice index of this engine request (the front end submits one engine request per choice)."""

# vLLM additional_config keys, the deployment's V-Reason settings.
SLOTS_KEY = "vreason_slots"
"""Controller slots in the slab: controlled sequences decoded at once."""
POSITIONS_KEY = "vreason_max_positions"
"""Controlled positions (video tokens) per slot."""
TRANSPOSED_KEY = "vreason_transposed_tail"
"""Keep transposed copies of the tail's weights for the input gradient where that pays (CPU, bf16/fp16)."""
DISABLED_KEY = "vreason_disabled"
"""Reasons found before the engine started why V-Reason cannot run (a list; empty or absent: none)."""
TEST_KNOBS_KEY = "vreason_test_knobs"
"""True on a server started with --enable-test-knobs: requests' options may carry the test-only knobs."""
TRACE_ADDR_KEY = "vreason_trace_addr"
"""ZeroMQ address where workers push channel messages (bound by the front end before vLLM starts;
absent: nothing is sent)."""
LITE_KEY = "vreason_lite_rate"
"""V-Reason Lite's rate (server/lite.py): the fraction of each video's tokens pruned before the
language model by the norm rule (absent or 0: off; vLLM's own --video-pruning-rate then runs EVS)."""
