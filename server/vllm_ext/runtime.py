"""V-Reason's work in the worker, one engine step at a time, without vLLM.

The runner (runner.py) owns one `VReasonRuntime` and calls it from vLLM's seams:
- `start` (load_model): the controller slab, the tail weights and layer L's overlay;
- `plan_step` (before the forward): the controlled rows of the batch and the overlay's plan;
- `forward_done` (after the forward): what layer L's attention produced for the plan;
- `control` (before sampling): the controller step, logits written back in place;
- `after_sampling`: the step's report queued, the trace rows that are ready sent (trace_out.py);
- `finish` (vLLM's bookkeeping): finished requests settled, their `RequestEnd`s sent;
- `stats`: the worker's `WorkerStats` (pulled by the front end over collective_rpc).

Each request that asked for V-Reason is one `ControlledRequest` (request.py) in `requests`,
from the step that first sees it until it finishes or fails; `uncontrolled` remembers the ones
seen without it (or no longer with it), so their extra_args are read once.

Containment: nothing V-Reason does for one request may stop the engine or change another
request. An exception in one request's part of the plan, the overlay or the controller step
fails that request alone (`fail`: its slot is freed, it decodes on uncontrolled, and its
`RequestEnd` carries the error, on which the front end aborts it and answers its client with
an error). An exception that cannot be pinned on one request fails the controlled requests of
that step; plain requests are never touched.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

import torch

from vreason.server.controller import (ControllerSlab, ControllerState, TailWeights, UpdateInputs, VReasonParams,
                                       controller_step, tail_logits)
from vreason.server.controller.step import StepReport, rows_index, take, to_device
from vreason.server.controller.tail import f32
from vreason.server.keys import EXTRA_ARGS_KEY
from vreason.server.messages import FAILED, NO_SLOT, WorkerStats

from .overlay import LayerOverlay, OverlayPlan, OverlayResult
from .paged_cache import run_positions, token_runs
from .request import ControlledRequest
from .trace_out import TraceOut

logger = logging.getLogger("vllm.vreason")  # under vLLM's logger, so the worker's log shows it


class VReasonRuntime:
    """The controlled requests of one worker and the per-step work on them.

    device: the worker's device; check: compare the overlay and the tail with vLLM's outputs
    while dV == 0 (debug/test flag); compilation: describes how vLLM runs the model (read when
    stats are made). `trace` sends the trace rows and request ends (its `pusher` sends nothing
    until the runner gives it the front end's address).
    """

    def __init__(self, device: torch.device, *, check: bool, compilation: Callable[[], str]):
        self.device, self.check, self.compilation = device, check, compilation
        self.calls: Counter[str] = Counter()  # seams and phases run (tests check they keep firing)
        self.totals: Counter[str] = Counter()
        self.unavailable: tuple[str, ...] = ()
        self.adapter = ""  # the V-Reason model class loaded (vllm_ext/model.py)
        self.layout: dict | None = None  # what the start-up layout probe proved (layout_probe.py)
        self.overlay: LayerOverlay | None = None
        self.slab: ControllerSlab | None = None
        self.tail: TailWeights | None = None
        self.token_ids: dict[str, int] = {}  # "video", "image": the prompt's visual pad tokens
        self.params_type: type[VReasonParams] = VReasonParams  # how requests' options are read
        self.hooks = None  # the test-only knobs' (`enable_test_knobs`)
        self.transient_bytes = 0  # update transients with every slot updating
        self.requests: dict[str, ControlledRequest] = {}
        self.uncontrolled: set[str] = set()
        self.rows: list[tuple[int, ControlledRequest]] = []  # this step's controlled (batch row, request)
        self.plan: OverlayPlan | None = None  # this step's plan for layer L (None: no controlled rows)
        self._last_plan: OverlayPlan | None = None  # the newest plan built, and what it was built for
        self._plan_key: tuple | None = None
        self.result: OverlayResult | None = None  # what layer L's attention produced for it
        self.last_report: StepReport | None = None  # the latest forward's (None: no controlled rows)
        self.trace = TraceOut(self.requests.get, self.fail_rows, self.totals)
        self.step_seconds: list[float] = []  # drained by the front end's metrics
        self.max_overlay_error = 0.0
        self.max_tail_error = 0.0

    @property
    def active(self) -> bool:
        """A slab is allocated and the start-up checks have not disabled V-Reason."""
        return self.slab is not None

    def start(self, slab: ControllerSlab, tail: TailWeights, *, video_token_id: int, image_token_id: int,
              transient_bytes: int = 0) -> None:
        """Serve controlled requests with this slab and tail (load_model)."""
        self.slab, self.tail, self.transient_bytes = slab, tail, transient_bytes
        self.token_ids = {"video": video_token_id, "image": image_token_id}
        if self.overlay is not None:
            self.overlay.slab = slab

    def enable_test_knobs(self) -> None:
        """Read requests' options with the test-only knobs and act on them (--enable-test-knobs)."""
        from vreason.server.controller.knobs import TEST_HOOKS, KnobbedParams

        self.params_type, self.hooks = KnobbedParams, TEST_HOOKS

    def disable(self, reasons: tuple[str, ...]) -> None:
        """V-Reason cannot run on this deployment: plain requests are served as usual."""
        self.unavailable = reasons
        self.slab = None
        if self.overlay is not None:
            self.overlay.slab = None
        logger.warning("V-Reason is disabled on this deployment (plain requests are served as usual): %s",
                       "; ".join(reasons))

    # -- requests ------------------------------------------------------------------------------

    def _admit(self, req_id: str, request) -> ControlledRequest | None:
        """Its record on first sight (`request`: vLLM's per-request state, read for its
        extra_args and prompt); None when it is not controlled."""
        self.uncontrolled.add(req_id)
        extra = request.sampling_params.extra_args or {}
        rec = ControlledRequest.from_extra_args(req_id, extra)
        if rec is None:
            return None
        try:
            params = self.params_type.from_dict(extra[EXTRA_ARGS_KEY])
        except Exception as e:  # noqa: BLE001 - unreadable options: end it by its tag
            self.requests[req_id] = rec
            self.uncontrolled.discard(req_id)
            self.fail(req_id, e)
            return None
        if not params.enabled:
            return None
        self.uncontrolled.discard(req_id)
        rec.params = params
        self.requests[req_id] = rec
        return rec

    def _create(self, rec: ControlledRequest, prompt: list[int]) -> ControllerState | None:
        """Its controller, when the forward that ends its prefill is planned."""
        visual = set(self.token_ids.values())
        # "text" (every prompt token that is not a visual pad) extends the method (docs/design.md)
        targets = {"video": {self.token_ids["video"]}, "image": {self.token_ids["image"]}, "visual": visual,
                   "text": set(prompt) - visual}[rec.params.targets]
        runs = token_runs(prompt, targets)
        s = ControllerState.create(rec.req_id, rec.params, runs, self.slab)
        if s is None:
            # The front end admits controlled requests within the slab's budget, so this is a
            # disagreement between its count and ours: the request is refused, never run uncontrolled.
            p, slab = sum(n for _, n in runs), self.slab
            self.fail(rec.req_id, RuntimeError(
                f"no controller slot fits ({p} controlled positions, {slab.max_positions} per slot; "
                f"{slab.free_slots()} of {slab.slots} slots free)"), code=NO_SLOT)
            return None
        rec.controller = s
        self.totals["created"] += 1
        return s

    def fail(self, req_id: str, e: BaseException, code: str = FAILED) -> None:
        """End one request's V-Reason with an error; it decodes on uncontrolled until the front
        end, told by its RequestEnd, aborts it. Never raises."""
        rec = self.requests.pop(req_id, None)
        if rec is None:
            return  # already failed in this step, or not controlled
        self.uncontrolled.add(req_id)
        if rec.controller is not None:
            rec.controller.release()
        self.totals["failed" if code == FAILED else "refused_no_slot"] += 1
        message = f"{type(e).__name__}: {e}"
        if code == FAILED:
            logger.error("V-Reason failed for request %s (it alone is ended with an error): %s", rec.tag, message,
                         exc_info=(type(e), e, e.__traceback__))
        else:
            logger.warning("V-Reason: request %s refused: %s", rec.tag, message)
        self.trace.ends.append(rec.end(code, message))
        self.rows = [(i, r) for i, r in self.rows if r is not rec]

    def fail_rows(self, e: BaseException, states: Iterable[ControllerState] | None = None) -> None:
        """Fail the requests of `states` (default: this step's controlled rows)."""
        for s in list(states) if states is not None else [r.controller for _, r in self.rows]:
            self.fail(s.req_id, e)

    def finish(self, finished: Iterable[str], thrown_away: set[str] = frozenset()) -> None:
        """vLLM finished these requests: read and send the rest of their rows, free their slots
        and send their ends (with any ends queued since the last send). `thrown_away`: those whose
        newest step's token vLLM throws away (`TraceOut.settle`, trace_out.py)."""
        for req_id in finished:
            self.uncontrolled.discard(req_id)
            rec = self.requests.pop(req_id, None)
            if rec is None:
                continue
            if rec.controller is not None:
                self.trace.settle(rec, self.last_report if req_id in thrown_away else None)
                rec.controller.release()
                self.totals["freed"] += 1
            self.trace.ends.append(rec.end())
        if self.trace.ends:
            self.trace.send([])

    # -- the step ------------------------------------------------------------------------------

    def plan_step(self, batch: Iterable[tuple[int, str]], requests: Mapping) -> OverlayPlan | None:
        """The controlled rows of this step's `batch` ((batch row, request id) of the rows vLLM
        keeps) and the plan for layer L; `requests`: vLLM's per-request states by id. Host
        bookkeeping only, no host sync (what goes to the device is copied from pinned memory
        without waiting). Never raises: a failure fails the step's controlled rows."""
        try:
            self.plan = self._plan(batch, requests)
        except Exception as e:  # noqa: BLE001
            self.fail_rows(e)
            self.rows, self.plan = [], None
        return self.plan

    def _plan(self, batch, requests) -> OverlayPlan | None:
        self.last_report = None
        self.rows = []
        attend, loads = [], []
        for i, r in batch:
            try:
                rec = self.requests.get(r)
                if rec is None:
                    if r in self.uncontrolled:
                        continue
                    rec = self._admit(r, requests[r])
                    if rec is None:
                        continue
                s = rec.controller
                if s is None:
                    s = self._create(rec, requests[r].prompt_token_ids)
                    if s is None:
                        continue
                if not s.loaded:
                    loads.append((s, i, to_device(run_positions(s.runs), self.device)))
            except Exception as e:  # noqa: BLE001 - this request's own bookkeeping
                self.fail(r, e)
                continue
            self.rows.append((i, rec))
            if s.has_offset or s.updates_at_next_step():
                attend.append((i, s))
        if not self.rows:
            return None
        # a step like the last (same rows attending, same slots, nothing to load) reuses its
        # plan: the index tensors change only when a request joins, leaves or starts overlaying
        key = tuple((i, id(s), s.has_offset) for i, s in attend)
        if loads or key != self._plan_key:
            self._plan_key = None if loads else key
            self._last_plan = OverlayPlan.for_rows(attend, loads, self.device, self.check)
        return self._last_plan

    def forward_done(self, result: OverlayResult | None) -> None:
        """After the forward, with what layer L's attention produced for the plan (None: it did
        not run it): fail the requests whose part of the plan could not run."""
        self.result = result
        plan = self.plan
        if plan is None:
            return
        if result is None:
            self.fail_rows(RuntimeError("vLLM did not call layer L's attention impl in the forward"))
            return
        if result.error is not None:
            self.fail_rows(result.error)
        for j, e in result.failed.items():
            self.fail(plan.attend_states[j].req_id, e)
        for s, e in result.load_failed:
            self.fail(s.req_id, e)

    def control(self, logits: torch.Tensor | None, aux_hidden_states: list | None) -> StepReport | None:
        """The controller step of this step's controlled rows, before vLLM samples from `logits`
        (its [batch, V] logits, written back in place); None when there were none (or they
        failed). `aux_hidden_states`: vLLM's aux outputs, [0] the residual entering layer L."""
        report = None
        if logits is not None and self.rows:
            try:
                report = self._control(logits, aux_hidden_states)
                # queued before vLLM's sampler, so vLLM's own output copy (which the engine waits
                # for) also covers this step's trace values
                report.read_later()
            except Exception as e:  # noqa: BLE001 - not one request's: fail this step's controlled rows
                self.fail_rows(e)
                report = None
            self.rows = []
        self.last_report = report
        return report

    def _control(self, all_logits: torch.Tensor, aux_hidden_states) -> StepReport:
        """Updates read what the forward left. Host syncs: none without an update, one with
        (step.py); rows are picked by `rows_index` (a device tensor indexed by a Python list
        would copy the list to the device blocking)."""
        plan, result = self.plan, self.result
        rows = [r.controller for _, r in self.rows]
        batch_rows = [i for i, _ in self.rows]
        # a view of vLLM's fp32 logits when the rows are consecutive: the write-back below is then a no-op
        logits = f32(take(all_logits, batch_rows))
        upd = None
        updating = [k for k, s in enumerate(rows) if s.updates_at_next_step()]
        if updating:
            if aux_hidden_states is None:
                raise RuntimeError("vLLM returned no auxiliary hidden states")
            self.calls["aux_hidden_states"] += 1
            where = {id(s): j for j, s in enumerate(plan.attend_states)}
            j = rows_index([where[id(rows[k])] for k in updating], result.o.device)
            residual = f32(aux_hidden_states[0][result.last[j]])
            upd = UpdateInputs(updating, result.o[j], result.a[j], residual)
            if self.check:
                self._check_tail(rows, updating, upd, logits)
        if result is not None and result.checked:
            self.max_overlay_error = max(self.max_overlay_error, result.max_error)
            self.totals["overlay_checks"] += result.checked
        report = controller_step(rows, logits, upd, self.tail, self.trace.pending(), self.hooks)
        for i, e in report.failed.items():
            self.fail(rows[i].req_id, e)
        if report.after:
            changed = list(report.after)
            into = rows_index([batch_rows[k] for k in changed], all_logits.device)
            all_logits[into] = take(logits, changed).to(all_logits.dtype)
        return report

    def _check_tail(self, rows, updating, upd, logits) -> None:
        """While dV == 0 the lean tail must reproduce vLLM's logits (debug/test flag only)."""
        fresh = [m for m, k in enumerate(updating) if not rows[k].has_offset]
        if fresh:
            z = tail_logits(upd.o[fresh], upd.residual[fresh], self.tail)
            err = (z - logits[[updating[m] for m in fresh]]).abs().max().item()
            self.max_tail_error = max(self.max_tail_error, err)
            self.totals["tail_checks"] += len(fresh)

    def after_sampling(self, report: StepReport | None, seconds: float) -> None:
        """Queue the step's report and send the trace rows that are ready (trace_out.py)."""
        if report is None:
            return
        if len(self.step_seconds) < 100_000:
            self.step_seconds.append(seconds)
        self.trace.add(report)

    # -- stats ---------------------------------------------------------------------------------

    def stats(self, drain_step_seconds: bool = False) -> WorkerStats:
        """The worker's V-Reason state; with `drain_step_seconds` (the metrics' scrape) the step
        durations gathered since the last drain, which are then dropped."""
        slab, overlay = self.slab, self.overlay
        active = {(r.tag if r.choice == 0 else f"{r.tag}/{r.choice}"): r.controller.nbytes()
                  for r in self.requests.values() if r.controller is not None}
        steps = []
        if drain_step_seconds:
            steps, self.step_seconds = self.step_seconds, []
        return WorkerStats(
            available=not self.unavailable, unavailable=list(self.unavailable), adapter=self.adapter,
            kv_layout=self.layout,
            active_slots=len(active), controller_bytes=sum(active.values()), active=active,
            slab_bytes=slab.nbytes() if slab is not None else 0,
            slab_slots=slab.slots if slab is not None else 0,
            slab_free_slots=slab.free_slots() if slab is not None else 0,
            slab_max_positions=slab.max_positions if slab is not None else 0,
            update_transient_bytes_max=self.transient_bytes if slab is not None else 0,
            tail_transposed_bytes=self.tail.transposed_bytes() if self.tail is not None else 0,
            totals=dict(self.totals), max_overlay_error=self.max_overlay_error, max_tail_error=self.max_tail_error,
            checks=self.check, compilation=self.compilation(),
            calls={**self.calls, **(overlay.calls if overlay is not None else {})}, step_seconds=steps)
