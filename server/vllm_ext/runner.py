"""V-Reason in vLLM's V1 model runner: per-request controller slots, the overlay plan, the inner loop.

Seams overridden (each counted in `vreason_calls`; tests check they keep firing):
- `load_model`: checks the loaded model (support.py), asks for vLLM's auxiliary hidden-state
  outputs (the EAGLE3 mechanism) before the model loads, and allocates the controller slab once,
  sized by the deployment's flags (additional_config, see server/wire.py).
- `_update_states`: after vLLM's bookkeeping, drop the controllers of finished/aborted requests
  and send each one's `RequestEnd`.
- `_model_forward`: posts this step's overlay plan for layer L's wrapped attention impl
  (overlay.py), so the main forward itself produces the controlled logits.
- `sample_tokens`: before sampling, run the controller step (updates use the main forward's
  logits, attention output and weights, and the aux residual); after it, send the trace rows.

A request gets a controller when the forward that ends its prefill runs (step t = 1) and loses
it when vLLM reports it finished. The paged cache is never written by V-Reason, so
prefix-cached blocks stay shared safely.

Containment: nothing V-Reason does for one request may stop the engine or change another
request. An exception in one request's part of the plan, the overlay or the controller step
fails that request alone (`_vr_fail`: its slot is freed, it decodes on uncontrolled, and its
`RequestEnd` carries the error, on which the front end aborts it and answers its client with
an error). An exception that cannot be pinned on one request fails the controlled requests of
that step; plain requests are never touched.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, replace

import torch
from vllm.logger import init_logger

from vreason.server.controller import (ControllerSlab, ControllerState, UpdateInputs, VReasonParams,
                                       controller_step, serving_tail, tail_logits)
from vreason.server.controller.step import StepReport, rows_index, take, to_device
from vreason.server.wire import (CHECK_ENV, CHOICE_KEY, DISABLED_KEY, EXTRA_ARGS_KEY, FAILED, NO_SLOT,
                                 POSITIONS_KEY, REQUEST_TAG_KEY, SLOTS_KEY, STATS_EVERY_S, TRANSPOSED_KEY, RequestEnd,
                                 StepRow, WorkerStats)

from .layout_probe import decode_metadata, probe_layout
from .overlay import OverlayPlan
from .paged_cache import run_positions, token_runs
from .support import compilation_summary, model_reasons
from .trace_channel import TracePusher
from .warm_up import warm_up_kernels

logger = init_logger("vllm.vreason")  # under vLLM's logger, so the worker's start-up log shows it


@dataclass(frozen=True)
class Controlled:
    """A request that asked for V-Reason, as the runner saw it first (from its extra_args)."""

    params: VReasonParams
    tag: str
    choice: int


class VReasonRunnerMixin:
    """Mixed in front of vLLM's V1 GPUModelRunner or CPUModelRunner."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.vreason_calls: Counter[str] = Counter()
        self.vreason_states: dict[str, ControllerState] = {}
        self.vreason_totals: Counter[str] = Counter()
        self.vreason_unavailable: tuple[str, ...] = ()
        self.vreason_layout: dict | None = None  # what the start-up layout probe proved (layout_probe.py)
        self._vr_requests: dict[str, Controlled | None] = {}  # None: not controlled (or no longer)
        self._vr_pusher = TracePusher()
        self._vr_tail = None
        self._vr_slab: ControllerSlab | None = None
        self._vr_rows: list[tuple[int, ControllerState]] = []
        self._vr_last_plan: OverlayPlan | None = None
        self._vr_reports: list[tuple[StepReport, set[int]]] = []  # step order; rows not yet sent
        self._vr_last_report: StepReport | None = None  # the latest forward's (None: no controlled rows)
        self._vr_ends: list[RequestEnd] = []
        self._vr_step_seconds: list[float] = []
        self._vr_stats_at = 0.0
        self._vr_check = os.environ.get(CHECK_ENV) == "1"
        self.vreason_max_overlay_error = 0.0
        self.vreason_max_tail_error = 0.0

    # -- seams ---------------------------------------------------------------------------------

    def load_model(self, *args, **kwargs):
        self.vreason_calls["load_model"] += 1
        extra = self.vllm_config.additional_config or {}
        disabled = tuple(extra.get(DISABLED_KEY, ()))
        if not disabled:
            self.use_aux_hidden_state_outputs = True  # residual entering layer L (model.py picks it)
        out = super().load_model(*args, **kwargs)
        model = self.get_model()
        if not disabled:
            tail = model.vreason_tail_modules() if hasattr(model, "vreason_tail_modules") else None
            backend = model.vreason_attention_backend() if tail is not None else None
            disabled = model_reasons(model, backend, tail)
        self.vreason_unavailable = disabled
        if disabled:
            logger.warning("V-Reason is disabled on this deployment (plain requests are served as usual): %s",
                           "; ".join(disabled))
            return out
        cfg = self.model_config.hf_config.get_text_config()
        slots = int(extra.get(SLOTS_KEY, self.scheduler_config.max_num_seqs))
        positions = int(extra.get(POSITIONS_KEY, self.model_config.max_model_len))
        overlay = model.vreason_overlay
        self._vr_slab = ControllerSlab(slots, positions, overlay.num_kv_heads, overlay.head_dim,
                                       self.kv_cache_dtype, self.device)
        overlay.slab = self._vr_slab
        self._vr_tail = serving_tail(model.vreason_tail_weights(), extra.get(TRANSPOSED_KEY, True))
        if self._vr_tail.transposed is not None:
            logger.info("V-Reason: transposed copies of layer L's tail and lm_head for the input gradient, "
                        "%.1f MiB (--vreason-transposed-tail off: none, and each updating row reads the "
                        "weights once)", self._vr_tail.transposed_bytes() / 2**20)
        logger.info("V-Reason slab: %d slots x %d positions, %.1f MiB allocated (%.1f MiB per slot); update "
                    "transients at most %.1f MiB (all slots updating); %d layers, hidden %d; vLLM %s",
                    slots, positions, self._vr_slab.nbytes() / 2**20, self._vr_slab.bytes_per_slot() / 2**20,
                    self._vr_transient_bytes(slots) / 2**20, cfg.num_hidden_layers, cfg.hidden_size,
                    compilation_summary(self.vllm_config))
        return out

    def initialize_kv_cache(self, *args, **kwargs):
        """After vLLM has allocated the caches and built the backends (the CPU ISA and the kernel
        block size are fixed there): prove the layout of layer L's cache on this hardware and, on
        a GPU, compile the kernels for the shapes serving will launch; or disable V-Reason."""
        self.vreason_calls["initialize_kv_cache"] += 1
        out = super().initialize_kv_cache(*args, **kwargs)
        if self._vr_slab is None:
            return out
        report = self._vr_probe_layout()
        self.vreason_layout = report.as_dict()
        reason = report.reason
        if reason is None:
            logger.info("V-Reason: layer L's KV cache layout proven on this hardware (%s, ISA %s, %s; overlay "
                        "vs backend attention %.2g, tolerance %.2g)", report.backend, report.isa,
                        report.packing, report.max_error, report.tolerance)
            if self.device.type == "cuda":
                reason = self._vr_warm_up()
        if reason is not None:
            self.vreason_unavailable = (reason,)
            self._vr_slab = self.get_model().vreason_overlay.slab = None
            logger.warning("V-Reason is disabled on this deployment (plain requests are served as usual): %s",
                           reason)
        return out

    def _vr_warm_up(self) -> str | None:
        """Compile and run the Triton kernels once at the deployment's shapes; the reason on failure."""
        overlay = self.get_model().vreason_overlay
        layer = self.vllm_config.compilation_config.static_forward_context[overlay.layer_name]
        try:
            seconds = warm_up_kernels(self.device, overlay, self._vr_slab, block_size=layer.kv_cache.shape[2],
                                      max_model_len=self.model_config.max_model_len,
                                      max_rows=self.scheduler_config.max_num_seqs,
                                      vocab_sizes=(self.model_config.hf_config.get_text_config().vocab_size,
                                                   self._vr_tail.lm_head.shape[0]))
        except Exception as e:  # noqa: BLE001 - a kernel that does not compile here disables V-Reason, not the worker
            logger.exception("V-Reason: kernel warm-up failed")
            return f"the V-Reason kernels failed to compile or run at start-up: {type(e).__name__}: {e}"
        logger.info("V-Reason: Triton kernels compiled and warmed up in %.1f s", seconds)
        return None

    def _vr_probe_layout(self):
        overlay = self.get_model().vreason_overlay
        layer = self.vllm_config.compilation_config.static_forward_context[overlay.layer_name]
        builder = next(g.get_metadata_builder() for groups in self.attn_groups for g in groups
                       if overlay.layer_name in g.layer_names)
        impl = layer.impl.inner if hasattr(layer.impl, "inner") else layer.impl
        return probe_layout(layer, impl, decode_metadata(builder), tuple(layer.kv_cache.shape), layer.kv_cache.dtype,
                            self.device, overlay.num_heads, overlay.scale)

    def _update_states(self, scheduler_output):
        self.vreason_calls["_update_states"] += 1
        for req_id in scheduler_output.finished_req_ids:
            c = self._vr_requests.pop(req_id, None)
            s = self.vreason_states.pop(req_id, None)
            if s is not None:
                self._vr_settle(req_id, c, s)
                s.release()
                self.vreason_totals["freed"] += 1
            if c is not None:
                self._vr_end(c, s)
        if self._vr_ends:
            self._vr_send([])
        return super()._update_states(scheduler_output)

    def _model_forward(self, *args, **kwargs):
        self.vreason_calls["_model_forward"] += 1
        overlay = getattr(self.get_model(), "vreason_overlay", None)
        if overlay is None or self._vr_slab is None:
            return super()._model_forward(*args, **kwargs)
        overlay.plan = self._vr_plan_contained()
        try:
            return super()._model_forward(*args, **kwargs)
        finally:
            plan, overlay.plan = overlay.plan, None
            self._vr_last_plan = plan
            if plan is not None:
                if not plan.called:
                    self._vr_fail_rows(RuntimeError("vLLM did not call layer L's attention impl in the forward"))
                elif plan.error is not None:
                    self._vr_fail_rows(plan.error)
                for j, e in plan.failed.items():
                    self._vr_fail(plan.attend_states[j].req_id, e)
                for s, e in plan.load_failed:
                    self._vr_fail(s.req_id, e)

    @torch.inference_mode()
    def sample_tokens(self, grammar_output):
        self.vreason_calls["sample_tokens"] += 1
        report, t0 = None, time.perf_counter()
        if self.execute_model_state is not None and self._vr_rows:
            try:
                report = self._vr_control()
                # queued before vLLM's sampler, so vLLM's own output copy (which the engine waits
                # for) also covers this step's trace values
                report.read_later()
            except Exception as e:  # noqa: BLE001 - not one request's: fail this step's controlled rows
                self._vr_fail_rows(e)
                report = None
            self._vr_rows = []
        self._vr_last_report = report
        out = super().sample_tokens(grammar_output)
        if report is not None:
            self._vr_after_step(report, time.perf_counter() - t0)
        return out

    # -- stats ---------------------------------------------------------------------------------

    def vreason_stats(self) -> dict:
        """Worker-side V-Reason state (collective_rpc target via the worker)."""
        overlay = getattr(self.get_model(), "vreason_overlay", None)
        slab = self._vr_slab
        return {"available": not self.vreason_unavailable, "unavailable": list(self.vreason_unavailable),
                "kv_layout": self.vreason_layout,
                "active_slots": len(self.vreason_states),
                "controller_bytes": sum(s.nbytes() for s in self.vreason_states.values()),
                "slab_bytes": slab.nbytes() if slab is not None else 0,
                "slab_slots": slab.slots if slab is not None else 0,
                "slab_free_slots": slab.free_slots() if slab is not None else 0,
                "slab_max_positions": slab.max_positions if slab is not None else 0,
                "update_transient_bytes_max": self._vr_transient_bytes(slab.slots) if slab is not None else 0,
                "tail_transposed_bytes": self._vr_tail.transposed_bytes() if self._vr_tail is not None else 0,
                "totals": dict(self.vreason_totals),
                "max_overlay_error": self.vreason_max_overlay_error,
                "max_tail_error": self.vreason_max_tail_error,
                "checks": self._vr_check,
                "compilation": compilation_summary(self.vllm_config),
                "calls": {**self.vreason_calls, **(overlay.calls if overlay is not None else {})}}

    def _vr_transient_bytes(self, rows: int) -> int:
        cfg = self.model_config.hf_config.get_text_config()
        return self._vr_slab.update_transient_bytes(rows, cfg.num_attention_heads, cfg.hidden_size,
                                                    cfg.intermediate_size, cfg.vocab_size)

    # -- per-request bookkeeping ---------------------------------------------------------------

    def _controlled(self, req_id: str) -> Controlled | None:
        if req_id not in self._vr_requests:
            extra = self.requests[req_id].sampling_params.extra_args or {}
            raw = extra.get(EXTRA_ARGS_KEY)
            self._vr_requests[req_id] = None
            if raw is not None:
                c = Controlled(VReasonParams(), str(extra.get(REQUEST_TAG_KEY, req_id)), int(extra.get(CHOICE_KEY, 0)))
                try:
                    params = VReasonParams.from_dict(raw)
                except Exception as e:  # noqa: BLE001 - unreadable options: end it by its tag
                    self._vr_requests[req_id] = c
                    self._vr_fail(req_id, e)
                    return None
                self._vr_requests[req_id] = replace(c, params=params) if params.enabled else None
        return self._vr_requests[req_id]

    def _vr_end(self, c: Controlled, s: ControllerState | None, code: str | None = None,
                error: str | None = None) -> None:
        if s is None:
            self._vr_ends.append(RequestEnd(c.tag, c.choice, 0, 0, 0, 0, None, 0, code, error))
            return
        self._vr_ends.append(RequestEnd(c.tag, c.choice, s.rows_sent, s.switch.t, s.updates, s.skipped_updates,
                                        s.switch.peak_step, s.num_positions, code, error))

    def _vr_fail(self, req_id: str, e: BaseException, code: str = FAILED) -> None:
        """End one request's V-Reason with an error; it decodes on uncontrolled until the front
        end, told by its RequestEnd, aborts it. Never raises."""
        c = self._vr_requests.get(req_id)
        if c is None:
            return  # already failed in this step, or not controlled
        self._vr_requests[req_id] = None
        s = self.vreason_states.pop(req_id, None)
        if s is not None:
            s.release()
        self.vreason_totals["failed" if code == FAILED else "refused_no_slot"] += 1
        message = f"{type(e).__name__}: {e}"
        if code == FAILED:
            logger.error("V-Reason failed for request %s (it alone is ended with an error): %s", c.tag, message,
                         exc_info=(type(e), e, e.__traceback__))
        else:
            logger.warning("V-Reason: request %s refused: %s", c.tag, message)
        self._vr_end(c, s, code, message)
        self._vr_rows = [(i, r) for i, r in self._vr_rows if r.req_id != req_id]

    def _vr_fail_rows(self, e: BaseException, states: list[ControllerState] | None = None) -> None:
        for s in states if states is not None else [s for _, s in self._vr_rows]:
            self._vr_fail(s.req_id, e)

    # -- the step ------------------------------------------------------------------------------

    def _vr_plan_contained(self) -> OverlayPlan | None:
        try:
            return self._vr_plan()
        except Exception as e:  # noqa: BLE001
            self._vr_fail_rows(e)
            self._vr_rows = []
            return None

    def _vr_plan(self) -> OverlayPlan | None:
        """The controlled rows of this step (host bookkeeping only) and the plan for layer L.
        No host sync: what goes to the device is copied from pinned memory without waiting."""
        self._vr_last_report = None
        num_reqs = self.input_batch.num_reqs
        req_ids = self.input_batch.req_ids[:num_reqs]
        discard = self.discard_request_mask.np[:num_reqs]
        self._vr_rows = []
        attend, loads = [], []
        for i, r in enumerate(req_ids):
            if discard[i]:
                continue
            try:
                c = self._controlled(r)
                if c is None:
                    continue
                s = self.vreason_states.get(r)
                if s is None:
                    s = self._vr_create(r, c)
                    if s is None:
                        continue
                if not s.loaded:
                    loads.append((s, i, to_device(run_positions(s.runs), self.device)))
            except Exception as e:  # noqa: BLE001 - this request's own bookkeeping
                self._vr_fail(r, e)
                continue
            self._vr_rows.append((i, s))
            if s.has_offset or s.updates_at_next_step():
                attend.append((i, s))
        if not self._vr_rows:
            return None
        return OverlayPlan.for_rows(attend, loads, self.device, self._vr_check)

    def _vr_create(self, req_id: str, c: Controlled) -> ControllerState | None:
        cfg = self.model_config.hf_config
        prompt = self.requests[req_id].prompt_token_ids
        visual = {cfg.video_token_id, cfg.image_token_id}
        # "text" (every prompt token that is not a visual pad) extends the method (docs/design.md)
        targets = {"video": {cfg.video_token_id}, "image": {cfg.image_token_id}, "visual": visual,
                   "text": set(prompt) - visual}[c.params.targets]
        runs = token_runs(prompt, targets)
        s = ControllerState.create(req_id, c.params, runs, self._vr_slab)
        if s is None:
            # The front end admits controlled requests within the slab's budget, so this is a
            # disagreement between its count and ours: the request is refused, never run uncontrolled.
            p = sum(n for _, n in runs)
            slab = self._vr_slab
            self._vr_fail(req_id, RuntimeError(
                f"no controller slot fits ({p} controlled positions, {slab.max_positions} per slot; "
                f"{slab.free_slots()} of {slab.slots} slots free)"), code=NO_SLOT)
            return None
        self.vreason_states[req_id] = s
        self.vreason_totals["created"] += 1
        return s

    def _vr_control(self):
        """The controller step of every controlled row; updates read what the forward left.
        Host syncs: none without an update, one with (step.py); rows are picked by `rows_index`
        (a device tensor indexed by a Python list would copy the list to the device blocking)."""
        state = self.execute_model_state
        plan = self._vr_last_plan
        rows = [s for _, s in self._vr_rows]
        batch_rows = [i for i, _ in self._vr_rows]
        # a view of vLLM's fp32 logits when the rows are consecutive: the write-back below is then a no-op
        logits = take(state.logits, batch_rows).float()
        upd = None
        updating = [k for k, s in enumerate(rows) if s.updates_at_next_step()]
        if updating:
            if state.aux_hidden_states is None:
                raise RuntimeError("vLLM returned no auxiliary hidden states")
            self.vreason_calls["aux_hidden_states"] += 1
            where = {id(s): j for j, s in enumerate(plan.attend_states)}
            j = rows_index([where[id(rows[k])] for k in updating], plan.o.device)
            residual = state.aux_hidden_states[0][plan.last[j]].float()
            upd = UpdateInputs(updating, plan.o[j], plan.a[j], residual)
            if self._vr_check:
                self._vr_check_tail(rows, updating, upd, logits)
        if plan is not None and plan.checked:
            self.vreason_max_overlay_error = max(self.vreason_max_overlay_error, plan.max_error)
            self.vreason_totals["overlay_checks"] += plan.checked
        report = controller_step(rows, logits, upd, self._vr_tail, [r for r, _ in self._vr_reports])
        for i, e in report.failed.items():
            self._vr_fail(rows[i].req_id, e)
        if report.after:
            changed = list(report.after)
            into = rows_index([batch_rows[k] for k in changed], state.logits.device)
            state.logits[into] = take(logits, changed).to(state.logits.dtype)
        return report

    def _vr_check_tail(self, rows, updating, upd, logits) -> None:
        """While dV == 0 the lean tail must reproduce vLLM's logits (debug/test flag only)."""
        fresh = [m for m, k in enumerate(updating) if not rows[k].has_offset]
        if fresh:
            z = tail_logits(upd.o[fresh], upd.residual[fresh], self._vr_tail)
            err = (z - logits[[updating[m] for m in fresh]]).abs().max().item()
            self.vreason_max_tail_error = max(self.vreason_max_tail_error, err)
            self.vreason_totals["tail_checks"] += len(fresh)

    def _vr_after_step(self, report: StepReport, seconds: float) -> None:
        """Queue the step's report and send what is ready (`_vr_flush`)."""
        self._vr_reports.append((report, set(range(len(report.rows)))))
        if len(self._vr_step_seconds) < 10_000:
            self._vr_step_seconds.append(seconds)
        self._vr_flush()

    def _vr_flush(self, ending: tuple[Controlled, ControllerState] | None = None) -> None:
        """Finish, in step order, the queued reports whose values have reached the host (never
        waiting), then count each row and send the rows of traced requests, in order. A
        request's newest row waits until the request runs its next step or ends: until then
        vLLM may still throw its token away (`_vr_settle`). `ending` (a request being ended):
        every report with a row of it is finished now, waiting if need be, and its rows are sent."""
        last = -1
        if ending is not None:
            last = max((k for k, (r, left) in enumerate(self._vr_reports)
                        if any(r.rows[i] is ending[1] and i not in r.dropped for i in left)), default=-1)
        rows: list[tuple[str, int, StepRow]] = []
        queue, self._vr_reports = self._vr_reports, []
        for k, (report, left) in enumerate(queue):
            if k > last and not report.ready():
                self._vr_reports.extend(queue[k:])  # later reports wait for it: the switch reads H_t in order
                break
            try:
                report.finish()
            except Exception as e:  # noqa: BLE001 - reading the step's values failed: its requests fail
                self._vr_fail_rows(e, [s for s in report.rows if not s.released])
                continue
            for i in sorted(left):
                s, row = report.rows[i], report.step_rows.get(i)
                own = ending is not None and s is ending[1]
                c = ending[0] if own else self._vr_requests.get(s.req_id)
                if row is not None and c is not None and not s.released and not own and row.t >= s.steps:
                    continue  # its newest: wait for its next step or its end
                left.discard(i)
                if row is None or c is None or s.released:
                    continue  # failed, dropped or ended: nothing to send
                self.vreason_totals["updates"] += int(row.updated)
                self.vreason_totals["skipped_updates"] += int(row.skipped)
                if s.params.trace:
                    rows.append((c.tag, c.choice, row))
                    s.rows_sent += 1
            if left:
                self._vr_reports.append((report, left))
        self._vr_send(rows)

    def _vr_settle(self, req_id: str, c: Controlled | None, s: ControllerState) -> None:
        """Before a finished request's RequestEnd: read and send the rest of its rows.

        Under async scheduling vLLM schedules step N+1 before token N is known, so a request
        that stopped at N (an end-of-sequence or stop token, a stop string, an abort) is still in
        step N+1's batch and that token is thrown away. The worker cannot tell at N+1 without a
        host sync (the stop is decided by the scheduler from token N's value), so that step
        runs; the request's finish then arrives while it is still in the persistent batch of
        that last step, and its newest step is taken back: not sent, not counted. (A request
        stopped by max_tokens or the model length is not scheduled again, so it is not there.)"""
        try:
            newest = self._vr_last_report
            if (getattr(self, "use_async_scheduling", False) and newest is not None
                    and req_id in self.input_batch.req_id_to_index):
                for i, r in enumerate(newest.rows):
                    if r is s:
                        newest.drop(i)
            if c is not None:
                self._vr_flush((c, s))
        except Exception:  # noqa: BLE001 - its end still goes out (with the rows sent so far)
            logger.exception("V-Reason: could not settle the trace of request %s", req_id)

    def _vr_send(self, rows: list) -> None:
        now = time.monotonic()
        stats = None
        # with every request end too: its counts (rows are counted when read, a step late) are
        # then in the front end's copy by the time its response is done, not up to a second later
        if self._vr_ends or now - self._vr_stats_at >= STATS_EVERY_S:
            self._vr_stats_at = now
            stats = self.vreason_stats()
            del stats["calls"]
            stats["step_seconds"], self._vr_step_seconds = self._vr_step_seconds, []
            stats = WorkerStats(stats)
        ends, self._vr_ends = self._vr_ends, []
        if rows or ends or stats is not None:
            try:
                self._vr_pusher.send(rows, ends, stats)
            except Exception:  # noqa: BLE001 - the channel must never stop the engine
                logger.exception("V-Reason: could not send on the trace channel")

