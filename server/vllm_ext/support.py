"""What V-Reason needs from the loaded model, checked once in the worker so that it fails closed.

`model_reasons` returns the reasons V-Reason cannot run (empty: supported), each naming the
setting to change: the model class, the attention backend the overlay reads, and the
quantisation of layer L's tail and lm_head, which the differentiable tail reads as plain
weights. The deployment's configuration is checked before the engine starts
(`server/engine/support.py`).

Plain serving never depends on them: an unsupported deployment serves plain requests as vLLM
does, with V-Reason disabled and the reasons reported.
"""

from __future__ import annotations

from vreason.server.keys import ARCHITECTURES

# Backends whose paged-cache layout `paged_cache.split_kv` reads and whose output the overlay
# was checked against.
SUPPORTED_BACKENDS = ("CPU_ATTN", "FLASH_ATTN", "TRITON_ATTN")


def compilation_summary(vllm_config) -> str:
    """How vLLM runs the model: its compilation mode and CUDA-graph mode (eager = NONE/NONE)."""
    cc = vllm_config.compilation_config
    mode = getattr(cc.mode, "name", str(cc.mode))
    graphs = getattr(cc.cudagraph_mode, "name", str(cc.cudagraph_mode))
    return f"compilation mode {mode}, cudagraph mode {graphs}"


def _is_unquantized(module) -> bool:
    method = getattr(module, "quant_method", None)
    return method is None or type(method).__name__.startswith("Unquantized")


def model_reasons(model, attention_backend: str | None, tail_modules: dict | None = None) -> tuple[str, ...]:
    """Reasons from the loaded model: its class, layer L's attention backend and tail weights.

    `tail_modules` maps names to layer L's o_proj, gate_up_proj, down_proj and the lm_head
    (given by the V-Reason model class); a module with a quantisation method other than vLLM's
    unquantised one stores weights the plain-torch tail cannot read (FP8 scales, AWQ/GPTQ packs).
    """
    if tail_modules is None:
        return (f"model class {type(model).__name__}: not the V-Reason subclass (the plugin registers it for "
                f"{', '.join(ARCHITECTURES)}; is VLLM_PLUGINS excluding 'vreason'?)",)
    reasons = []
    if attention_backend not in SUPPORTED_BACKENDS:
        reasons.append(f"attention backend {attention_backend}: V-Reason reads the paged cache of "
                       f"{', '.join(SUPPORTED_BACKENDS)} only (choose one with --attention-backend)")
    quantized = [f"{name} ({type(m.quant_method).__name__})" for name, m in tail_modules.items()
                 if not _is_unquantized(m)]
    if quantized:
        reasons.append(f"quantized weights in layer L's tail or lm_head: {', '.join(quantized)}; serve an "
                       "unquantized checkpoint (or one that leaves the last layer and lm_head unquantized)")
    return tuple(reasons)
