"""One generated step of V-Reason for a batch of controlled rows (docs/design.md, the method).

The logits handed in are already the controlled logits z_t(dV): layer L's attention read the
controlled values inside the main forward. So the first inner step's forward is that forward;
an update adds only the input-gradient backward through the tail (tail.py), the gradient to
the controlled values by group sums over the query heads of each KV head, the fused Adam update
in place in the request's slab slot, and with `apply: "now"` one tail forward.

Because query and keys do not change during the inner steps, o = c + a . Vn with c constant:
after an update the attention output is o + a . (Vn_new - Vn_old), no second attention pass.

Host syncs (docs/design.md, "Host syncs"): none at a step without updates, one at a step with
updates (entropies and finite flags together). Host lists reach the device through pinned
memory without blocking (`to_device`, `rows_index`: never a device tensor indexed by a Python
list). The values a step leaves for the trace (H_t without an update, the entropy after an
apply-now update) are copied to pinned memory without waiting (`StepReport.read_later`) and
read when they have arrived, in step order; an update step's one sync brings every earlier
copy in. The gradient is computed for alpha = 1 and scaled by alpha afterwards (the tail
backward is linear in dL/dlogits), so the sync that gives H_t, hence alpha_t, comes after the
backward. Each extra inner step (steps > 1) adds one more.

Test-only knobs (knobs.py) act through `hooks`, passed only on a server started with
--enable-test-knobs: None in production, where no knob is checked.

Containment: one request's failure (an exception, e.g. out of memory, anywhere in its part of
the step) fails that request alone. Batched phases that change no request state (entropy,
gradients, the apply-now tail) are retried one row at a time when they raise, and the rows that
still raise are failed. The phase that changes state (Adam) updates the small rows together on
copies gathered from their slots and writes them back only once the whole batch has succeeded
(`_adam_gathered`; on a failure the rows go one at a time), and a large row in place in its
own slot (`_adam`). Failed rows are in `StepReport.failed`; the runner ends their requests with an error.
A non-finite entropy or gradient is not a failure: that update is skipped, counted and marked.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from vreason.kernels import controller_update, entropy_grad
from vreason.server.messages import StepRow

from .objective import SwitchState, entropy
from .params import NORM_RESTORE
from .slab import GATHER_MAX_VALUES
from .state import ControllerState
from .tail import TailWeights, f32, head_logits, tail_acts, tail_input_grad, tail_logits


# -- host <-> device without waiting -----------------------------------------------------------

def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without a host sync. On CUDA it is staged in pinned memory and
    copied with non_blocking=True: from pageable memory, or without non_blocking, the copy
    makes the CPU wait until the device has drained its queue (the whole batch stalls)."""
    if device.type != "cuda":
        return host.to(device)
    pinned = torch.empty(host.shape, dtype=host.dtype, pin_memory=True)
    pinned.copy_(host)
    return pinned.to(device, non_blocking=True)


def rows_index(ks: Sequence[int], device: torch.device) -> slice | torch.Tensor:
    """An index for the rows `ks` (a host list) of a tensor on `device`: a slice when they are
    consecutive, else a device tensor (`to_device`). Indexing a device tensor with the list
    itself copies it to the device blocking."""
    ks = list(ks)
    if not ks or ks == list(range(ks[0], ks[0] + len(ks))):
        return slice(ks[0], ks[0] + len(ks)) if ks else slice(0, 0)
    return to_device(torch.tensor(ks, dtype=torch.long), device)


def take(x: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """x[ks] for a host list of row indices, without a host sync (`rows_index`)."""
    return x[rows_index(ks, x.device)]


def record_event(device: torch.device):
    """A CUDA event recorded on the current stream (the no-host-sync test replaces this)."""
    event = torch.cuda.Event()
    event.record()
    return event


class HostCopy:
    """A device tensor on its way to host memory: on CUDA a non-blocking copy into pinned
    memory and an event recorded after it; elsewhere the tensor itself, there at once."""

    def __init__(self, x: torch.Tensor):
        if x.device.type == "cuda":
            self.host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
            self.host.copy_(x, non_blocking=True)
            self.event = record_event(x.device)
        else:
            self.host, self.event = x, None

    def ready(self) -> bool:
        """True once the values are in host memory (asks the device; never waits)."""
        return self.event is None or self.event.query()

    def values(self) -> list[float]:
        """The values (waits for the copy if it has not arrived)."""
        if self.event is not None:
            self.event.synchronize()
        return self.host.tolist()


# -- the step ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class UpdateInputs:
    """What the main forward returns for the rows that update at this step."""

    rows: list[int]  # indices into the step's rows (and logits)
    o: torch.Tensor  # [U, Hq*D] layer L's attention output with the current Vn
    a: torch.Tensor  # [U, Hq, Pmax] fp32 attention weights at the controlled positions (0 past P)
    residual: torch.Tensor  # [U, hidden] residual stream entering layer L


def group_grad(a: torch.Tensor, grad_o: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """dL/dVn [U, Pmax, Hkv, D] = sum over the query heads g of each KV head of a_g * dL/do_g.

    a: [U, Hq, Pmax], grad_o: [U, Hq*D]. One batched GEMM over (row, KV head); values are never
    expanded to the query heads.
    """
    u, hq, p = a.shape
    g = hq // num_kv_heads
    a4 = a.view(u, num_kv_heads, g, p)
    go = grad_o.view(u, num_kv_heads, g, -1)
    return torch.einsum("uhgp,uhgd->uphd", a4, go)


def group_apply(a: torch.Tensor, dvn: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """a: [Hq, P], dvn: [P, Hkv, D] -> the change of the attention output [Hq*D]."""
    hq, p = a.shape
    return torch.einsum("hgp,phd->hgd", a.view(num_kv_heads, hq // num_kv_heads, p), dvn).reshape(-1)


def group_apply_rows(a: torch.Tensor, dvn: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """`group_apply` of U rows at once: a: [U, Hq, P], dvn: [U, P, Hkv, D] -> [U, Hq*D]."""
    u, hq, p = a.shape
    return torch.einsum("uhgp,uphd->uhgd", a.view(u, num_kv_heads, hq // num_kv_heads, p), dvn).reshape(u, -1)


@dataclass
class StepReport:
    """One step's outcome per row. `read_later` starts copying the values the host has not read
    (without waiting), `ready` says when they are in, and `finish` reads them, advances the
    switch of every row and makes each row's `StepRow` (kept in `rows[i].last_row`). Reports
    must be finished in step order (the switch consumes H_t in order)."""

    rows: list[ControllerState]
    h: torch.Tensor | None = None  # [len(h_rows)] H_t of the rows in h_rows (device)
    h_rows: list[int] = field(default_factory=list)
    h_host: dict[int, float] | None = None
    ema: dict[int, float] = field(default_factory=dict)
    alpha: dict[int, float] = field(default_factory=dict)
    updated: set[int] = field(default_factory=set)
    skipped: set[int] = field(default_factory=set)
    after: dict[int, torch.Tensor] = field(default_factory=dict)  # row -> entropy after apply now
    failed: dict[int, BaseException] = field(default_factory=dict)  # row -> what it raised
    step_rows: dict[int, StepRow] = field(default_factory=dict)
    dropped: set[int] = field(default_factory=set)  # rows whose token vLLM threw away (`drop`)
    before: dict[int, SwitchState] = field(default_factory=dict)  # row -> its switch before this step
    copy: HostCopy | None = None
    done: bool = False
    hooks: Any = None  # the test-only knobs' hooks (knobs.py); None in production

    def advance(self) -> None:
        """Advance the switch of every live row (needs h_host)."""
        for i in self.h_rows:
            if i not in self.failed and i not in self.dropped and i not in self.alpha:
                s = self.rows[i]
                self.before[i] = replace(s.switch)
                alpha = s.switch.advance(self.h_host[i])
                self.alpha[i] = self.hooks.alpha(s, alpha) if self.hooks is not None else alpha
                self.ema[i] = s.switch.ema

    def _after_rows(self) -> list[int]:
        return [i for i in self.after if i not in self.failed]

    def read_later(self) -> None:
        """Start copying what the host has not read yet (H_t when no update ran, the entropies
        after apply-now updates) to host memory; never waits."""
        if self.copy is not None or self.done:
            return
        parts = [self.h] if self.h_host is None and self.h is not None else []
        keys = self._after_rows()
        if keys:
            parts.append(torch.stack([self.after[i] for i in keys]))
        if parts:
            self.copy = HostCopy(torch.cat(parts) if len(parts) > 1 else parts[0])

    def ready(self) -> bool:
        """True when `finish` will not wait."""
        return self.done or self.copy is None or self.copy.ready()

    def finish(self) -> None:
        """Read the step's values (waiting if they have not arrived), advance the switches and
        make the rows. Idempotent."""
        if self.done:
            return
        self.read_later()
        values = self.copy.values() if self.copy is not None else []
        if self.h_host is None:
            n = len(self.h_rows) if self.h is not None else 0
            self.h_host, values = dict(zip(self.h_rows, values[:n])), values[n:]
            self.advance()
        after = dict(zip(self._after_rows(), values))
        for i in self.alpha:
            if i in self.failed or i in self.dropped:
                continue
            s = self.rows[i]
            s.last_row = self.step_rows[i] = StepRow(
                t=s.switch.t, entropy=self.h_host[i], ema=self.ema[i], alpha=self.alpha[i],
                updated=i in self.updated, skipped=i in self.skipped, entropy_after=after.get(i))
        self.copy, self.done = None, True

    def drop(self, i: int) -> None:
        """Row i's token was thrown away by vLLM (the request had already stopped): take back
        what its step counted (the update or skip, the switch's advance, the step) and make no
        trace row for it. Only for a request's newest step; its slot is left as the step made
        it (the request is ending)."""
        s = self.rows[i]
        self.dropped.add(i)
        s.steps -= 1
        s.updates -= int(i in self.updated)
        s.skipped_updates -= int(i in self.skipped)
        if i in self.before:
            s.switch = self.before[i]
        self.step_rows.pop(i, None)


def rowwise(fn: Callable[[list[int]], torch.Tensor], ks: list[int],
            fail: Callable[[int, BaseException], None]) -> tuple[list[int], torch.Tensor | None]:
    """fn(ks) for a batch of row keys (a tensor whose first dim follows ks). If the batch
    raises, each row is run alone; the rows that still raise go to `fail` and are left out.
    Only for phases that change no request state. Returns (the rows kept, their outputs)."""
    if not ks:
        return [], None
    try:
        return ks, fn(ks)
    except Exception as e:  # noqa: BLE001 - contained per request below
        if len(ks) == 1:
            fail(ks[0], e)
            return [], None
    kept, outs = [], []
    for k in ks:
        try:
            outs.append(fn([k]))
            kept.append(k)
        except Exception as e:  # noqa: BLE001
            fail(k, e)
    return kept, (torch.cat(outs) if outs else None)


def _adam(s: ControllerState, grad_vn: torch.Tensor) -> torch.Tensor:
    """One fused Adam step in the request's slot; returns Vn_new - Vn_old [P, Hkv, D] as read by
    the attention (cache dtype), and stores the new Vn there."""
    p, slab = s.num_positions, s.slab
    v0, d, m, v = slab.rows(s.slot, p)
    n = v0.shape[0]
    s.adam_step += 1
    step = torch.full((n,), s.adam_step, dtype=torch.int32, device=v0.device)
    lr = torch.full((n,), s.params.lr, dtype=torch.float32, device=v0.device)
    vn = controller_update(d, m, v, v0, grad_vn.reshape(n, -1), step, lr,
                           norm_restore=s.params.norm_restore == "token")
    old = slab.vn[s.slot, :p]
    new = vn.view_as(old).to(old.dtype)
    dvn = f32(new) - f32(old)
    old.copy_(new)
    return dvn


def gathered(s: ControllerState) -> bool:
    """Whether `s` updates in the gathered batch (`GATHER_MAX_VALUES`)."""
    return s.num_positions * s.slab.v0.shape[2] * s.slab.v0.shape[3] <= GATHER_MAX_VALUES


def _adam_gathered(ks: list[int], rows: list[ControllerState], upd: UpdateInputs, grad_vn: torch.Tensor,
                   grad_of: dict[int, int], scale: dict[int, float], o: torch.Tensor, hkv: int) -> list[int]:
    """One fused Adam step for the update rows `ks` together (indices into `upd.rows`), with o
    moved by each row's change of Vn; the rows share one norm_restore. The batch is computed on copies and written back only when
    it has all succeeded, so a failure leaves every slot as it was: the rows then update one at
    a time (`_adam`), where a failure is that row's alone. Returns the rows done (none on failure
    or with fewer than two rows)."""
    if len(ks) < 2:
        return []
    states = [rows[upd.rows[k]] for k in ks]
    slab, device = states[0].slab, o.device
    try:
        n_head, d = slab.v0.shape[2:]
        pm = max(s.num_positions for s in states)
        # flat [row, D] indices: into the slab (slot, position, head) and into the padded batch
        lens = [s.num_positions * n_head for s in states]
        at = [s.slot * slab.max_positions * n_head for s in states]
        src = to_device(torch.cat([torch.arange(a, a + n) for a, n in zip(at, lens)]), device)
        dst = to_device(torch.cat([torch.arange(j * pm * n_head, j * pm * n_head + n)
                                   for j, n in enumerate(lens)]), device)
        per_row = lambda xs, dtype: to_device(  # noqa: E731 - one value per request, repeated over its rows
            torch.tensor(xs, dtype=dtype).repeat_interleave(torch.tensor(lens)), device)
        step = per_row([s.adam_step + 1 for s in states], torch.int32)
        lr = per_row([s.params.lr for s in states], torch.float32)
        g_scale = per_row([scale[k] for k in ks], torch.float32)
        flat = lambda t: t.view(-1, d)  # noqa: E731
        grad = grad_vn[rows_index([grad_of[k] for k in ks], grad_vn.device), :pm].reshape(-1, d).index_select(0, dst)
        v0, delta, m, v = (flat(t).index_select(0, src) for t in (slab.v0, slab.delta, slab.exp_avg, slab.exp_avg_sq))
        vn = controller_update(delta, m, v, v0, grad * g_scale[:, None], step, lr,
                               norm_restore=states[0].params.norm_restore == "token")
        new = vn.to(slab.vn.dtype)
        dvn = f32(new) - f32(flat(slab.vn).index_select(0, src))
        change = torch.zeros(len(ks) * pm * n_head, d, dtype=torch.float32, device=device).index_copy_(0, dst, dvn)
        j = rows_index(ks, device)
        shift = group_apply_rows(upd.a[j, :, :pm], change.view(len(ks), pm, n_head, d), hkv)
    except Exception:  # noqa: BLE001 - nothing written yet: the rows update one at a time
        return []
    for t, u in ((slab.delta, delta), (slab.exp_avg, m), (slab.exp_avg_sq, v), (slab.vn, new)):
        flat(t).index_copy_(0, src, u)
    o[j] += shift
    for s in states:
        s.adam_step += 1
    return ks


def controller_step(rows: list[ControllerState], logits: torch.Tensor, upd: UpdateInputs | None,
                    weights: TailWeights, earlier: Sequence[StepReport] = (), hooks: Any = None) -> StepReport:
    """Advance every row by one generated step; writes apply-now logits into `logits` in place.

    logits: [R, V] the rows' controlled logits from the main forward. `upd` covers exactly the
    rows whose step t is a multiple of update_every. A non-finite entropy or gradient (or the
    test knob nan_at_step, through `hooks`) skips that request's update; it is counted and
    marked in the trace.
    `earlier`: reports of earlier steps not finished yet, in step order; an update step
    finishes them after its host sync (their values have arrived by then), before it advances
    the switches. Without updates nothing is read: call `read_later`/`finish` on the report.
    """
    report = StepReport(rows, hooks=hooks)
    for s in rows:
        s.steps += 1

    def fail(i: int, e: BaseException) -> None:
        report.failed.setdefault(i, e)

    report.h_rows, report.h = rowwise(lambda ks: entropy(take(logits, ks)), list(range(len(rows))), fail)
    if upd is None or not upd.rows:
        return report
    hkv = rows[upd.rows[0]].slab.v0.shape[2]
    fail_k = lambda k, e: fail(upd.rows[k], e)  # noqa: E731 - keys of upd's rows

    def first_grad(ks: list[int]) -> torch.Tensor:  # dL/dVn for alpha = 1, with its finite flag
        if hooks is not None:
            for k in ks:
                hooks.before_update(rows[upd.rows[k]])
        ones = torch.ones(len(ks), dtype=torch.float32, device=logits.device)
        _, g1 = entropy_grad(take(logits, [upd.rows[k] for k in ks]), ones)
        j = rows_index(ks, upd.o.device)
        acts = tail_acts(upd.o[j], upd.residual[j], weights)
        return group_grad(upd.a[j], tail_input_grad(acts, g1, weights), hkv)

    ks, grad_vn = rowwise(first_grad, [k for k, i in enumerate(upd.rows) if i not in report.failed], fail_k)
    finite = torch.isfinite(grad_vn).flatten(1).all(1) if ks else torch.zeros(0, device=logits.device)
    both = torch.cat([report.h, finite.float()]) if report.h is not None else finite.float()
    host = both.cpu().tolist()  # the step's one host sync
    n_h = len(report.h_rows)
    report.h_host = dict(zip(report.h_rows, host[:n_h]))
    grad_ok = {k: host[n_h + j] > 0 for j, k in enumerate(ks)}
    for r in earlier:  # their copies were queued before the sync: reading them does not wait
        r.finish()
    report.advance()
    o = upd.o.to(torch.float32, copy=True)
    live, grad_of = [], {k: j for j, k in enumerate(ks)}
    for k, i in enumerate(upd.rows):
        if i in report.failed:
            continue
        s = rows[i]
        if s.steps % s.params.update_every != 0:
            raise RuntimeError(f"request {s.req_id}: update inputs at a step without an update")
        ok = math.isfinite(report.h_host[i]) and grad_ok.get(k, False)
        if not ok or (hooks is not None and hooks.poisoned(s)):
            report.skipped.add(i)
        else:
            live.append(k)
    for step in range(max(rows[i].params.steps for i in upd.rows)):
        if step > 0:  # later inner steps: forward with the new Vn, then backward
            live = [k for k in live if rows[upd.rows[k]].params.steps > step and upd.rows[k] not in report.failed]

            def next_grad(ks: list[int]) -> torch.Tensor:
                j = rows_index(ks, o.device)
                acts = tail_acts(o[j], upd.residual[j], weights)
                alpha = to_device(torch.tensor([report.alpha[upd.rows[k]] for k in ks], dtype=torch.float32),
                                  o.device)
                _, g = entropy_grad(head_logits(acts, weights), alpha)
                return group_grad(upd.a[j], tail_input_grad(acts, g, weights), hkv)

            live, grad_vn = rowwise(next_grad, live, fail_k)
            if not live:
                break
            ok = torch.isfinite(grad_vn).flatten(1).all(1).cpu().tolist()  # one more host sync
            for j, k in enumerate(live):
                if not ok[j]:
                    report.skipped.add(upd.rows[k])
            grad_of = {k: j for j, k in enumerate(live)}
            live = [k for j, k in enumerate(live) if ok[j]]
        scale = {k: report.alpha[upd.rows[k]] if step == 0 else 1.0 for k in live}
        done = [k for kind in NORM_RESTORE for k in _adam_gathered(
            [k for k in live if gathered(rows[upd.rows[k]]) and rows[upd.rows[k]].params.norm_restore == kind],
            rows, upd, grad_vn, grad_of, scale, o, hkv)]
        for k in [k for k in live if k not in done]:
            i = upd.rows[k]
            s = rows[i]
            try:  # changes the request's own slot only: a failure here is that request's alone
                dvn = _adam(s, grad_vn[grad_of[k], :s.num_positions] * scale[k])
                o[k] += group_apply(upd.a[k, :, :s.num_positions], dvn, hkv)
            except Exception as e:  # noqa: BLE001
                fail(i, e)
                live.remove(k)
    now = []
    for k, i in enumerate(upd.rows):
        s = rows[i]
        if i in report.failed:
            continue
        if i in report.skipped:
            s.skipped_updates += 1
            continue
        s.updates += 1
        report.updated.add(i)
        if s.params.apply == "now":
            now.append(k)

    def now_logits(ks: list[int]) -> torch.Tensor:
        j = rows_index(ks, o.device)
        return tail_logits(o[j], upd.residual[j], weights)

    now, z = rowwise(now_logits, now, fail_k)
    if now:
        idx = [upd.rows[k] for k in now]
        logits[rows_index(idx, logits.device)] = z.to(logits.dtype)
        for i, h_after in zip(idx, entropy(z)):
            report.after[i] = h_after
    return report
