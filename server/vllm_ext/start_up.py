"""V-Reason's start-up in the worker, read off vLLM's model runner.

- `start_controller` (load_model): the reasons the loaded model cannot be controlled, or the
  controller slab sized by the deployment's flags (additional_config, see server/keys.py) and
  the tail weights, handed to the runtime;
- `check_hardware` (initialize_kv_cache, once vLLM has allocated the caches and built the
  backends, which fixes the CPU ISA and the kernel block size): the layout of layer L's cache
  proven on this hardware (layout_probe.py) and, on a GPU, the kernels compiled for the shapes
  serving will launch (warm_up.py).
"""

from __future__ import annotations

import logging

from vreason.server.controller import ControllerSlab, serving_tail
from vreason.server.keys import POSITIONS_KEY, SLOTS_KEY, TRANSPOSED_KEY

from .layout_probe import decode_metadata, probe_layout
from .runtime import VReasonRuntime
from .support import compilation_summary, model_reasons
from .warm_up import warm_up_kernels

logger = logging.getLogger("vllm.vreason")


def loaded_model_reasons(model) -> tuple[str, ...]:
    """Why the loaded model cannot be controlled (support.py); empty when it can."""
    tail = model.vreason_tail_modules() if hasattr(model, "vreason_tail_modules") else None
    backend = model.vreason_attention_backend() if tail is not None else None
    return model_reasons(model, backend, tail)


def start_controller(runner, runtime: VReasonRuntime, model, extra: dict) -> None:
    """Allocate the slab and build the tail for `model` (the V-Reason subclass) and start `runtime`."""
    cfg = runner.model_config.hf_config
    text = cfg.get_text_config()
    slots = int(extra.get(SLOTS_KEY, runner.scheduler_config.max_num_seqs))
    positions = int(extra.get(POSITIONS_KEY, runner.model_config.max_model_len))
    overlay = model.vreason_overlay
    slab = ControllerSlab(slots, positions, overlay.num_kv_heads, overlay.head_dim, runner.kv_cache_dtype,
                          runner.device)
    tail = serving_tail(model.vreason_tail_weights(), extra.get(TRANSPOSED_KEY, True))
    transient = slab.update_transient_bytes(slots, text.num_attention_heads, text.hidden_size,
                                            text.intermediate_size, text.vocab_size)
    runtime.start(slab, tail, video_token_id=cfg.video_token_id, image_token_id=cfg.image_token_id,
                  transient_bytes=transient)
    if tail.transposed is not None:
        logger.info("V-Reason: transposed copies of layer L's tail and lm_head for the input gradient, "
                    "%.1f MiB (--vreason-transposed-tail off: none, and each updating row reads the "
                    "weights once)", tail.transposed_bytes() / 2**20)
    logger.info("V-Reason slab: %d slots x %d positions, %.1f MiB allocated (%.1f MiB per slot); update "
                "transients at most %.1f MiB (all slots updating); %d layers, hidden %d; vLLM %s",
                slots, positions, slab.nbytes() / 2**20, slab.bytes_per_slot() / 2**20, transient / 2**20,
                text.num_hidden_layers, text.hidden_size, compilation_summary(runner.vllm_config))


def check_hardware(runner, runtime: VReasonRuntime) -> str | None:
    """Prove layer L's cache layout here and warm the kernels up on a GPU; the reason V-Reason
    cannot run, or None. The probe's report goes to `runtime.layout` (/vreason/stats)."""
    overlay = runtime.overlay
    layer = runner.vllm_config.compilation_config.static_forward_context[overlay.layer_name]
    builder = next(g.get_metadata_builder() for groups in runner.attn_groups for g in groups
                   if overlay.layer_name in g.layer_names)
    impl = layer.impl.inner if hasattr(layer.impl, "inner") else layer.impl
    report = probe_layout(layer, impl, decode_metadata(builder), tuple(layer.kv_cache.shape), layer.kv_cache.dtype,
                          runner.device, overlay.num_heads, overlay.scale)
    runtime.layout = report.as_dict()
    if report.reason is not None:
        return report.reason
    logger.info("V-Reason: layer L's KV cache layout proven on this hardware (%s, ISA %s, %s; overlay "
                "vs backend attention %.2g, tolerance %.2g)", report.backend, report.isa,
                report.packing, report.max_error, report.tolerance)
    if runner.device.type != "cuda":
        return None
    try:
        seconds = warm_up_kernels(runner.device, overlay, runtime.slab, block_size=layer.kv_cache.shape[2],
                                  max_model_len=runner.model_config.max_model_len,
                                  max_rows=runner.scheduler_config.max_num_seqs,
                                  vocab_sizes=(runner.model_config.hf_config.get_text_config().vocab_size,
                                               runtime.tail.lm_head.shape[0]))
    except Exception as e:  # noqa: BLE001 - a kernel that does not compile here disables V-Reason, not the worker
        logger.exception("V-Reason: kernel warm-up failed")
        return f"the V-Reason kernels failed to compile or run at start-up: {type(e).__name__}: {e}"
    logger.info("V-Reason: Triton kernels compiled and warmed up in %.1f s", seconds)
    return None
