"""What V-Reason needs from a vLLM deployment, checked once at start-up so that it fails closed.

Two checks, each returning the reasons V-Reason cannot run (empty: supported), each reason
naming the setting to change:
- `config_reasons` on vLLM's own config objects, before the engine starts (parallelism,
  speculative decoding, KV-cache dtype, LoRA, architecture);
- `model_reasons` on the loaded model, in the worker (the model class, the attention backend
  the overlay reads, and the quantisation of layer L's tail and lm_head, which the
  differentiable tail reads as plain weights).

Plain serving never depends on them: an unsupported deployment serves plain requests as vLLM
does, with V-Reason disabled and the reasons reported.
"""

from __future__ import annotations

ARCHITECTURE = "Qwen2_5_VLForConditionalGeneration"
# Backends whose paged-cache layout `paged_cache.split_kv` reads and whose output the overlay
# was checked against.
SUPPORTED_BACKENDS = ("CPU_ATTN", "FLASH_ATTN", "TRITON_ATTN")


def config_reasons(model_config, parallel_config, cache_config, speculative_config=None,
                   lora_config=None) -> tuple[str, ...]:
    """Reasons from vLLM's ModelConfig, ParallelConfig, CacheConfig, SpeculativeConfig, LoRAConfig."""
    reasons = []
    tp = parallel_config.tensor_parallel_size
    if tp != 1:
        reasons.append(f"tensor parallelism (--tensor-parallel-size {tp}): layer L's tail and lm_head are "
                       "per-rank shards; use --tensor-parallel-size 1 (scale out with --data-parallel-size)")
    pp = parallel_config.pipeline_parallel_size
    if pp != 1:
        reasons.append(f"pipeline parallelism (--pipeline-parallel-size {pp}): use 1")
    for name in ("decode_context_parallel_size", "prefill_context_parallel_size"):
        size = getattr(parallel_config, name, 1)
        if size != 1:
            reasons.append(f"context parallelism (--{name.replace('_', '-')} {size}): use 1")
    if speculative_config is not None:
        method = getattr(speculative_config, "method", None) or "draft model"
        reasons.append(f"speculative decoding ({method}): drafted tokens skip the controller; "
                       "remove --speculative-config")
    if cache_config.cache_dtype != "auto":
        reasons.append(f"KV-cache dtype {cache_config.cache_dtype!r} (--kv-cache-dtype): the overlay reads "
                       "values in the model dtype; use --kv-cache-dtype auto")
    if lora_config is not None:
        reasons.append("LoRA (--enable-lora): the differentiable tail does not apply adapters")
    archs = tuple(getattr(model_config.hf_config, "architectures", None) or ())
    if ARCHITECTURE not in archs:
        reasons.append(f"architecture {', '.join(archs) or 'unknown'}: V-Reason supports {ARCHITECTURE} only")
    return tuple(reasons)


def vllm_config_reasons(vllm_config) -> tuple[str, ...]:
    """`config_reasons` of a whole VllmConfig."""
    return config_reasons(vllm_config.model_config, vllm_config.parallel_config, vllm_config.cache_config,
                          vllm_config.speculative_config, vllm_config.lora_config)


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
                f"{ARCHITECTURE}; is VLLM_PLUGINS excluding 'vreason'?)",)
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
