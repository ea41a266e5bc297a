"""What V-Reason needs from a vLLM deployment's configuration, checked before the engine starts.

`config_reasons` reads vLLM's own config objects (public config API, no vLLM internals) and
returns the reasons V-Reason cannot run there (empty: supported), each naming the flag to
change. The loaded model is checked in the worker (`vllm_ext/support.py::model_reasons`).
Plain serving never depends on either: an unsupported deployment serves plain requests as
vLLM does, with V-Reason disabled and the reasons reported (or, with `--vreason on`, refuses
to start).
"""

from __future__ import annotations

from vreason.server.keys import ARCHITECTURES, UNSUPPORTED_ARCHITECTURES


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
    if not set(archs) & set(ARCHITECTURES):
        known = [f" ({UNSUPPORTED_ARCHITECTURES[a]})" for a in archs if a in UNSUPPORTED_ARCHITECTURES]
        reasons.append(f"architecture {', '.join(archs) or 'unknown'}{''.join(known)}: V-Reason supports "
                       f"{', '.join(ARCHITECTURES)} only")
    return tuple(reasons)


def vllm_config_reasons(vllm_config) -> tuple[str, ...]:
    """`config_reasons` of a whole VllmConfig."""
    return config_reasons(vllm_config.model_config, vllm_config.parallel_config, vllm_config.cache_config,
                          vllm_config.speculative_config, vllm_config.lora_config)
