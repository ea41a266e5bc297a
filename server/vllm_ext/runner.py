"""V-Reason in vLLM's V1 model runner: per-request controller slots and the batched inner loop.

Seams overridden (each counted in `vreason_calls`; tests/vllm_ext checks they keep firing):
- `_update_states`: after vLLM's bookkeeping, drop the controllers of finished/aborted requests.
- `_model_forward`: the documented forward seam; only counted (the model's hooks capture).
- `sample_tokens`: before sampling, replace the logits rows of controlled requests.

A request gets a controller when its prefill produces its first token (step t = 1) and loses
it when vLLM reports it finished. The last layer's attention for controlled rows is recomputed
from the paged cache with the controlled values at the video positions (read-time overlay):
the paged cache itself is never written, so prefix-cached blocks stay shared safely.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

import torch

from vreason.kernels.controlled_attention import controlled_attention
from vreason.server.controller import (ControllerState, RowInputs, VReasonParams, controller_step,
                                       needs_attention, pad_values, tail_logits)
from vreason.server.controller.params import EXTRA_ARGS_KEY, REQUEST_TAG_KEY

from .paged_cache import gather_positions, split_kv, token_runs
from .trace_channel import TracePusher

logger = logging.getLogger("vreason.vllm_ext")


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
        self.vreason_max_overlay_error = 0.0
        self.vreason_max_tail_error = 0.0

    def _update_states(self, scheduler_output):
        self.vreason_calls["_update_states"] += 1
        for req_id in scheduler_output.finished_req_ids:
            self._vr_params.pop(req_id, None)
            if self.vreason_states.pop(req_id, None) is not None:
                self.vreason_totals["freed"] += 1
        return super()._update_states(scheduler_output)

    def _model_forward(self, *args, **kwargs):
        self.vreason_calls["_model_forward"] += 1
        return super()._model_forward(*args, **kwargs)

    @torch.inference_mode()
    def sample_tokens(self, grammar_output):
        self.vreason_calls["sample_tokens"] += 1
        if self.execute_model_state is not None:
            self._vr_control()
        return super().sample_tokens(grammar_output)

    def vreason_stats(self) -> dict:
        cap = self.get_model().vreason_capture
        return {"active_slots": len(self.vreason_states),
                "controller_bytes": sum(s.nbytes() for s in self.vreason_states.values()),
                "totals": dict(self.vreason_totals),
                "max_overlay_error": self.vreason_max_overlay_error,
                "max_tail_error": self.vreason_max_tail_error,
                "calls": {**self.vreason_calls, **cap.calls}}

    def _params_of(self, req_id: str) -> VReasonParams | None:
        if req_id not in self._vr_params:
            extra = self.requests[req_id].sampling_params.extra_args or {}
            raw = extra.get(EXTRA_ARGS_KEY)
            params = VReasonParams.from_dict(raw) if raw is not None else None
            self._vr_params[req_id] = params if params is not None and params.enabled else None
        return self._vr_params[req_id]

    def _vr_control(self) -> None:
        state = self.execute_model_state
        num_reqs = self.input_batch.num_reqs
        req_ids = self.input_batch.req_ids[:num_reqs]
        discard = self.discard_request_mask.np[:num_reqs]
        rows = [(i, r) for i, r in enumerate(req_ids) if not discard[i] and self._params_of(r) is not None]
        if not rows:
            return
        if state.spec_decode_metadata is not None:
            raise RuntimeError("V-Reason does not support speculative decoding")
        t0 = time.perf_counter()
        model = self.get_model()
        cap = model.vreason_capture
        if self._vr_tail is None:
            self._vr_tail = model.vreason_tail_weights()
        layer = self.compilation_config.static_forward_context[cap.layer_name]
        key_cache, value_cache = split_kv(layer.kv_cache, layer.attn_backend.get_name(), getattr(layer, "isa", None))
        meta = cap.metadata
        last_token = (meta.query_start_loc[1:num_reqs + 1] - 1).long()

        # The controller's tensors must be ordinary (not inference-mode) tensors: autograd saves
        # them, and Adam updates its state in place. Clones made here are ordinary.
        with torch.inference_mode(False):
            states = [self._state_for(i, r, value_cache, meta) for i, r in rows]
            inputs = [RowInputs(state=s, logits=state.logits[i].clone(),
                                residual=cap.residual[last_token[i]].clone())
                      for (i, _), s in zip(rows, states)]
            attend = [k for k, s in enumerate(states) if needs_attention(s)]
            if attend:
                idx = torch.tensor([rows[k][0] for k in attend], dtype=torch.long, device=last_token.device)
                sub = [states[k] for k in attend]
                q = cap.query[last_token[idx]].view(len(attend), cap.num_heads, cap.head_dim)
                vid_start, vid_len = _run_tensors(sub)
                o, a = controlled_attention(
                    q, key_cache, value_cache, meta.block_table[idx], meta.seq_lens[idx],
                    vid_start.to(q.device), vid_len.to(q.device), pad_values(sub).to(value_cache.dtype),
                    cap.scale)
                self._vr_check_overlay(o, sub, cap.attn_out[last_token[idx]], state.logits[idx],
                                       cap.residual[last_token[idx]])
                for j, k in enumerate(attend):
                    inputs[k].o = o[j].float().clone()
                    inputs[k].a = a[j, :, :states[k].num_positions].float().clone()
            new_logits = controller_step(inputs, self._vr_tail)
        state.logits[[i for i, _ in rows]] = new_logits.to(state.logits.dtype)
        self._vr_report(states, time.perf_counter() - t0)

    def _vr_check_overlay(self, o, states, stock_attn, stock_logits, residual) -> None:
        """While dV == 0, the recomputed attention must equal the backend's own output and the
        plain-torch tail must reproduce vLLM's logits; the worst errors are kept in the stats."""
        fresh = [j for j, s in enumerate(states) if not s.has_offset]
        if fresh:
            o = o[fresh].reshape(len(fresh), -1).float()
            err = (o - stock_attn[fresh].float()).abs().max().item()
            self.vreason_max_overlay_error = max(self.vreason_max_overlay_error, err)
            z = tail_logits(stock_attn[fresh].float(), residual[fresh].float(), self._vr_tail)
            err = (z - stock_logits[fresh].float()).abs().max().item()
            self.vreason_max_tail_error = max(self.vreason_max_tail_error, err)

    def _state_for(self, row: int, req_id: str, value_cache, meta) -> ControllerState:
        s = self.vreason_states.get(req_id)
        if s is None:
            params = self._params_of(req_id)
            cfg = self.model_config.hf_config
            prompt = self.requests[req_id].prompt_token_ids
            visual = {cfg.video_token_id, cfg.image_token_id}
            targets = {"video": {cfg.video_token_id}, "image": {cfg.image_token_id}, "visual": visual,
                       "text": set(prompt) - visual}[params.targets]
            runs = token_runs(prompt, targets)
            positions = torch.cat([torch.arange(a, a + n) for a, n in runs]) if runs else torch.zeros(0, dtype=torch.long)
            v0 = gather_positions(value_cache, meta.block_table[row], positions.to(value_cache.device))
            s = ControllerState.create(req_id, params, runs, v0)
            self.vreason_states[req_id] = s
            self.vreason_totals["created"] += 1
        return s

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


def _run_tensors(states: list[ControllerState]) -> tuple[torch.Tensor, torch.Tensor]:
    max_runs = max(1, max(len(s.runs) for s in states))
    start = torch.zeros(len(states), max_runs, dtype=torch.int32)
    length = torch.zeros(len(states), max_runs, dtype=torch.int32)
    for i, s in enumerate(states):
        for k, (a, n) in enumerate(s.runs):
            start[i, k], length[i, k] = a, n
    return start, length
