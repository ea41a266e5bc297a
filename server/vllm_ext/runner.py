"""V-Reason in vLLM's V1 model runner: the seams, each a few lines that call the runtime.

Seams overridden (each counted in `vreason.calls`; tests check they keep firing):
- `load_model`: checks the loaded model (support.py), asks for vLLM's auxiliary hidden-state
  outputs (the EAGLE3 mechanism) before the model loads, and allocates the controller slab once,
  sized by the deployment's flags (start_up.py); with Lite on, turns on vLLM's video-pruning
  path, which vLLM's CPU runner leaves off (lite.py).
- `initialize_kv_cache`: proves layer L's cache layout on this hardware and warms the kernels
  up on a GPU, or disables V-Reason (start_up.py).
- `_update_states`: before vLLM's bookkeeping, settle the requests vLLM finished (or aborted)
  and send each one's `RequestEnd`.
- `_model_forward`: posts this step's overlay plan for layer L's wrapped attention impl
  (overlay.py), so the main forward itself produces the controlled logits.
- `sample_tokens`: before sampling, run the controller step (updates use the main forward's
  logits, attention output and weights, and the aux residual); after it, send the trace rows.

A request gets a controller when the forward that ends its prefill runs (step t = 1) and loses
it when vLLM reports it finished. The paged cache is never written by V-Reason, so
prefix-cached blocks stay shared safely. What V-Reason does per request, and how a failure is
contained to the request it belongs to, is the runtime's (runtime.py).
"""

from __future__ import annotations

import os
import time

import torch

from vreason.server.keys import CHECK_ENV, DISABLED_KEY, TEST_KNOBS_KEY, TRACE_ADDR_KEY
from vreason.server.messages import WorkerStats

from .overlay import OverlayPlan
from .runtime import VReasonRuntime
from .start_up import check_hardware, loaded_model_reasons, start_controller
from .support import compilation_summary
from .trace_channel import TracePusher


class VReasonRunnerMixin:
    """Mixed in front of vLLM's V1 GPUModelRunner or CPUModelRunner; `vreason` is the runtime."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.vreason = VReasonRuntime(self.device, check=os.environ.get(CHECK_ENV) == "1",
                                      compilation=lambda: compilation_summary(self.vllm_config))

    def load_model(self, *args, **kwargs):
        self.vreason.calls["load_model"] += 1
        extra = self.vllm_config.additional_config or {}
        self.vreason.trace.pusher = TracePusher(extra.get(TRACE_ADDR_KEY))
        if extra.get(TEST_KNOBS_KEY):
            self.vreason.enable_test_knobs()
        disabled = tuple(extra.get(DISABLED_KEY, ()))
        if not disabled:
            self.use_aux_hidden_state_outputs = True  # residual entering layer L (model.py picks it)
        out = super().load_model(*args, **kwargs)
        model = self.get_model()
        mm = self.model_config.multimodal_config
        if getattr(model, "supports_multimodal_pruning", False) and mm is not None and mm.is_multimodal_pruning_enabled():
            # vLLM's CPU runner never turns its video-pruning path on (its GPU runner does, in
            # load_model): without it pruned embeddings keep their position channels and the
            # first video request kills the engine (Lite and vLLM's EVS alike).
            self.is_multimodal_pruning_enabled = True
        self.vreason.overlay = getattr(model, "vreason_overlay", None)
        if self.vreason.overlay is not None:
            self.vreason.adapter = type(model).__name__
        disabled = disabled or loaded_model_reasons(model)
        if disabled:
            self.vreason.disable(disabled)
        else:
            start_controller(self, self.vreason, model, extra)
        return out

    def initialize_kv_cache(self, *args, **kwargs):
        """After vLLM has allocated the caches and built the backends: prove the layout of layer
        L's cache on this hardware and, on a GPU, compile the kernels; or disable V-Reason."""
        self.vreason.calls["initialize_kv_cache"] += 1
        out = super().initialize_kv_cache(*args, **kwargs)
        if hasattr(self.get_model(), "vreason_lite_pruned"):
            self.get_model().vreason_lite_pruned = 0  # vLLM's memory profiling ran dummy videos: not requests
        if self.vreason.active:
            reason = check_hardware(self, self.vreason)
            if reason is not None:
                self.vreason.disable((reason,))
        return out

    def _update_states(self, scheduler_output):
        self.vreason.calls["_update_states"] += 1
        finished = scheduler_output.finished_req_ids
        # still in the persistent batch under async scheduling: its newest token is thrown away
        batched = self.input_batch.req_id_to_index if getattr(self, "use_async_scheduling", False) else {}
        self.vreason.finish(finished, {r for r in finished if r in batched})
        return super()._update_states(scheduler_output)

    def _model_forward(self, *args, **kwargs):
        self.vreason.calls["_model_forward"] += 1
        overlay = self.vreason.overlay
        if overlay is None or not self.vreason.active:
            return super()._model_forward(*args, **kwargs)
        overlay.post(self._vreason_plan())
        try:
            return super()._model_forward(*args, **kwargs)
        finally:
            self.vreason.forward_done(overlay.take())

    def _vreason_plan(self) -> OverlayPlan | None:
        """This step's plan for layer L, over the rows whose token vLLM keeps."""
        n = self.input_batch.num_reqs
        discard = self.discard_request_mask.np[:n]
        batch = [(i, r) for i, r in enumerate(self.input_batch.req_ids[:n]) if not discard[i]]
        return self.vreason.plan_step(batch, self.requests)

    @torch.inference_mode()
    def sample_tokens(self, grammar_output):
        self.vreason.calls["sample_tokens"] += 1
        t0, state = time.perf_counter(), self.execute_model_state
        report = self.vreason.control(None if state is None else state.logits,
                                      None if state is None else state.aux_hidden_states)
        out = super().sample_tokens(grammar_output)
        self.vreason.after_sampling(report, time.perf_counter() - t0)
        return out

    def vreason_stats(self, drain_step_seconds: bool = False) -> WorkerStats:
        """Worker-side V-Reason state (the worker's collective_rpc target sends it as a dict), with
        the video tokens Lite pruned in this worker's model (lite.py)."""
        stats = self.vreason.stats(drain_step_seconds)
        stats.totals["lite_pruned_tokens"] = getattr(self.get_model(), "vreason_lite_pruned", 0)
        return stats
