"""V-Reason in vLLM's V1 model runner: per-request controller slots, the overlay plan, the inner loop.

Seams overridden (each counted in `vreason_calls`; tests check they keep firing):
- `load_model`: asks for vLLM's auxiliary hidden-state outputs (the EAGLE3 mechanism) before
  the model loads, and allocates the controller slab once.
- `_update_states`: after vLLM's bookkeeping, drop the controllers of finished/aborted requests.
- `_model_forward`: posts this step's overlay plan for layer L's wrapped attention impl
  (overlay.py), so the main forward itself produces the controlled logits.
- `sample_tokens`: before sampling, run the controller step (updates use the main forward's
  logits, attention output and weights, and the aux residual); after it, read the trace.

A request gets a controller when the forward that ends its prefill runs (step t = 1) and loses
it when vLLM reports it finished. The paged cache is never written by V-Reason, so
prefix-cached blocks stay shared safely.
"""

from __future__ import annotations

import os
import time
from collections import Counter

import torch
from vllm.logger import init_logger

from vreason.server.controller import (ControllerSlab, ControllerState, UpdateInputs, VReasonParams,
                                       controller_step, tail_logits)
from vreason.server.controller.params import EXTRA_ARGS_KEY, REQUEST_TAG_KEY

from .overlay import OverlayPlan
from .paged_cache import token_runs
from .trace_channel import TracePusher

logger = init_logger("vllm.vreason")  # under vLLM's logger, so the worker's start-up log shows it

CHECK_ENV = "VREASON_CHECK_OVERLAY"
"""Set to 1 to compare the overlay and the tail with vLLM's own outputs while dV == 0 (tests)."""
SLOTS_KEY, POSITIONS_KEY = "vreason_slots", "vreason_max_positions"
"""Keys of vLLM's `additional_config` that size the slab (defaults: max_num_seqs x max_model_len)."""


def compilation_summary(vllm_config) -> str:
    """How vLLM runs the model: its compilation mode and CUDA-graph mode (eager = NONE/NONE)."""
    cc = vllm_config.compilation_config
    mode = getattr(cc.mode, "name", str(cc.mode))
    graphs = getattr(cc.cudagraph_mode, "name", str(cc.cudagraph_mode))
    return f"compilation mode {mode}, cudagraph mode {graphs}"


class VReasonRunnerMixin:
    """Mixed in front of vLLM's V1 GPUModelRunner or CPUModelRunner."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.vreason_calls: Counter[str] = Counter()
        self.vreason_states: dict[str, ControllerState] = {}
        self.vreason_totals: Counter[str] = Counter()
        self._vr_params: dict[str, VReasonParams | None] = {}
        self._vr_pusher = TracePusher()
        self._vr_tail = None
        self._vr_slab: ControllerSlab | None = None
        self._vr_rows: list[tuple[int, ControllerState]] = []
        self._vr_last_plan: OverlayPlan | None = None
        self._vr_check = os.environ.get(CHECK_ENV) == "1"
        self.vreason_max_overlay_error = 0.0
        self.vreason_max_tail_error = 0.0

    def load_model(self, *args, **kwargs):
        self.vreason_calls["load_model"] += 1
        self.use_aux_hidden_state_outputs = True  # residual entering layer L (model.py picks the layer)
        out = super().load_model(*args, **kwargs)
        model = self.get_model()
        cfg = self.model_config.hf_config.get_text_config()
        extra = self.vllm_config.additional_config or {}
        slots = int(extra.get(SLOTS_KEY, self.scheduler_config.max_num_seqs))
        positions = int(extra.get(POSITIONS_KEY, self.model_config.max_model_len))
        overlay = model.vreason_overlay
        head_dim = overlay.head_dim
        self._vr_slab = ControllerSlab(slots, positions, overlay.num_kv_heads, head_dim,
                                       self.kv_cache_dtype, self.device)
        overlay.slab = self._vr_slab
        logger.info("V-Reason slab: %d slots x %d positions, %.1f MiB (%d layers, hidden %d); vLLM %s",
                    slots, positions, self._vr_slab.nbytes() / 2**20, cfg.num_hidden_layers, cfg.hidden_size,
                    compilation_summary(self.vllm_config))
        return out

    def _update_states(self, scheduler_output):
        self.vreason_calls["_update_states"] += 1
        for req_id in scheduler_output.finished_req_ids:
            self._vr_params.pop(req_id, None)
            s = self.vreason_states.pop(req_id, None)
            if s is not None:
                s.release()
                self.vreason_totals["freed"] += 1
        return super()._update_states(scheduler_output)

    def _model_forward(self, *args, **kwargs):
        self.vreason_calls["_model_forward"] += 1
        overlay = self.get_model().vreason_overlay
        overlay.plan = self._vr_plan()
        try:
            return super()._model_forward(*args, **kwargs)
        finally:
            plan, overlay.plan = overlay.plan, None
            self._vr_last_plan = plan
            if plan is not None and not plan.called:
                raise RuntimeError("V-Reason: vLLM did not call layer L's attention impl during the forward")

    @torch.inference_mode()
    def sample_tokens(self, grammar_output):
        self.vreason_calls["sample_tokens"] += 1
        report = None
        if self.execute_model_state is not None and self._vr_rows:
            t0 = time.perf_counter()
            report = self._vr_control()
            self._vr_rows = []
        out = super().sample_tokens(grammar_output)
        if report is not None:
            report.finish()  # reads the trace values once, after the sampler
            self._vr_report(report.rows, time.perf_counter() - t0)
        return out

    def vreason_stats(self) -> dict:
        overlay = self.get_model().vreason_overlay
        slab = self._vr_slab
        return {"active_slots": len(self.vreason_states),
                "controller_bytes": sum(s.nbytes() for s in self.vreason_states.values()),
                "slab_bytes": slab.nbytes() if slab is not None else 0,
                "slab_slots": slab.slots if slab is not None else 0,
                "totals": dict(self.vreason_totals),
                "max_overlay_error": self.vreason_max_overlay_error,
                "max_tail_error": self.vreason_max_tail_error,
                "checks": self._vr_check,
                "compilation": compilation_summary(self.vllm_config),
                "calls": {**self.vreason_calls, **overlay.calls}}

    def _params_of(self, req_id: str) -> VReasonParams | None:
        if req_id not in self._vr_params:
            extra = self.requests[req_id].sampling_params.extra_args or {}
            raw = extra.get(EXTRA_ARGS_KEY)
            params = VReasonParams.from_dict(raw) if raw is not None else None
            self._vr_params[req_id] = params if params is not None and params.enabled else None
        return self._vr_params[req_id]

    def _vr_plan(self) -> OverlayPlan | None:
        """The controlled rows of this step (host bookkeeping only) and the plan for layer L."""
        num_reqs = self.input_batch.num_reqs
        req_ids = self.input_batch.req_ids[:num_reqs]
        discard = self.discard_request_mask.np[:num_reqs]
        self._vr_rows = []
        attend, loads = [], []
        for i, r in enumerate(req_ids):
            if discard[i] or self._params_of(r) is None:
                continue
            s = self.vreason_states.get(r)
            if s is None:
                s = self._vr_create(r)
                if s is None:
                    continue
            if not s.loaded:
                positions = [torch.arange(a, a + n) for a, n in s.runs]
                positions = torch.cat(positions) if positions else torch.zeros(0, dtype=torch.long)
                loads.append((s, i, positions.to(self.device)))
            self._vr_rows.append((i, s))
            if s.has_offset or s.updates_at_next_step():
                attend.append((i, s))
        if not self._vr_rows:
            return None
        if self.speculative_config is not None:
            raise RuntimeError("V-Reason does not support speculative decoding")
        k, runs = len(attend), max([1] + [len(s.runs) for _, s in attend])
        start = torch.zeros(k, runs, dtype=torch.int32)
        length = torch.zeros(k, runs, dtype=torch.int32)
        for j, (_, s) in enumerate(attend):
            for m, (a, n) in enumerate(s.runs):
                start[j, m], length[j, m] = a, n

        def dev(xs):
            return torch.tensor(xs, dtype=torch.long).to(self.device, non_blocking=True)

        return OverlayPlan(
            rows=dev([i for i, _ in attend]), slots=dev([s.slot for _, s in attend]),
            vid_start=start.to(self.device), vid_len=length.to(self.device),
            p_max=max([1] + [s.num_positions for _, s in attend]),
            overlay=dev([j for j, (_, s) in enumerate(attend) if s.has_offset]),
            fresh=dev([j for j, (_, s) in enumerate(attend) if not s.has_offset]),
            loads=loads, check=self._vr_check, attend_states=[s for _, s in attend])

    def _vr_create(self, req_id: str) -> ControllerState | None:
        params = self._params_of(req_id)
        cfg = self.model_config.hf_config
        prompt = self.requests[req_id].prompt_token_ids
        visual = {cfg.video_token_id, cfg.image_token_id}
        # "text" (every prompt token that is not a visual pad) extends the method (docs/design.md)
        targets = {"video": {cfg.video_token_id}, "image": {cfg.image_token_id}, "visual": visual,
                   "text": set(prompt) - visual}[params.targets]
        runs = token_runs(prompt, targets)
        s = ControllerState.create(req_id, params, runs, self._vr_slab)
        if s is None:
            # Fail-closed admission (429 before scheduling) is the front end's job; here the
            # request runs uncontrolled and the refusal is counted and logged, never silent.
            self.vreason_totals["refused_no_slot"] += 1
            logger.warning("V-Reason: no controller slot for request %s (%d positions); it runs uncontrolled",
                           req_id, sum(n for _, n in runs))
            self._vr_params[req_id] = None
            return None
        self.vreason_states[req_id] = s
        self.vreason_totals["created"] += 1
        return s

    def _vr_control(self):
        """The controller step of every controlled row; updates read what the forward left."""
        state = self.execute_model_state
        plan = self._vr_last_plan
        if self._vr_tail is None:
            self._vr_tail = self.get_model().vreason_tail_weights()
        rows = [s for _, s in self._vr_rows]
        batch_rows = [i for i, _ in self._vr_rows]
        logits = state.logits[batch_rows].float()
        upd = None
        updating = [k for k, s in enumerate(rows) if s.updates_at_next_step()]
        if updating:
            if state.aux_hidden_states is None:
                raise RuntimeError("V-Reason: vLLM returned no auxiliary hidden states")
            self.vreason_calls["aux_hidden_states"] += 1
            where = {id(s): j for j, s in enumerate(plan.attend_states)}
            j = torch.tensor([where[id(rows[k])] for k in updating]).to(plan.o.device, non_blocking=True)
            residual = state.aux_hidden_states[0][plan.last[j]].float()
            upd = UpdateInputs(updating, plan.o[j], plan.a[j], residual)
            if self._vr_check:
                self._vr_check_tail(rows, updating, upd, logits)
        if plan.checked:
            self.vreason_max_overlay_error = max(self.vreason_max_overlay_error, plan.max_error)
            self.vreason_totals["overlay_checks"] += plan.checked
        report = controller_step(rows, logits, upd, self._vr_tail)
        if report.after:
            changed = list(report.after)
            state.logits[[batch_rows[k] for k in changed]] = logits[changed].to(state.logits.dtype)
        return report

    def _vr_check_tail(self, rows, updating, upd, logits) -> None:
        """While dV == 0 the lean tail must reproduce vLLM's logits (debug/test flag only)."""
        fresh = [m for m, k in enumerate(updating) if not rows[k].has_offset]
        if fresh:
            z = tail_logits(upd.o[fresh], upd.residual[fresh], self._vr_tail)
            err = (z - logits[[updating[m] for m in fresh]]).abs().max().item()
            self.vreason_max_tail_error = max(self.vreason_max_tail_error, err)
            self.vreason_totals["tail_checks"] += len(fresh)

    def _vr_report(self, states: list[ControllerState], seconds: float) -> None:
        rows = []
        for s in states:
            last = s.trace[-1]
            self.vreason_totals["updates"] += int(last["updated"])
            self.vreason_totals["skipped_updates"] += int(last.get("skipped", False))
            if s.params.trace:
                tag = (self.requests[s.req_id].sampling_params.extra_args or {}).get(REQUEST_TAG_KEY)
                rows.append([tag, s.req_id, s.switch.t, last])
            if not s.params.trace:
                s.trace.clear()  # the trace is only kept for requests that return it
        stats = {"step_seconds": seconds, "rows": len(states), **self.vreason_stats()}
        del stats["calls"]
        self._vr_pusher.send(rows, stats)
