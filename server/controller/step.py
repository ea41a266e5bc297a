"""One generated step of V-Reason for a batch of controlled rows (docs/design.md, the method).

The logits handed in are already the controlled logits z_t(dV): layer L's attention read the
controlled values inside the main forward. So the first inner step's forward is that forward;
an update adds only the input-gradient backward through the tail (tail.py), the gradient to
the controlled values by group sums over the query heads of each KV head, the fused Adam update
in place in the request's slab slot, and with `apply: "now"` one tail forward.

Because query and keys do not change during the inner steps, o = c + a . Vn with c constant:
after an update the attention output is o + a . (Vn_new - Vn_old), no second attention pass.

Host syncs: none at a step without updates (the trace is read after sampling, `finish`); one at
a step with updates (entropies and finite flags together). The gradient is computed for
alpha = 1 and scaled by alpha afterwards (the tail backward is linear in dL/dlogits), so the
sync that gives H_t, hence alpha_t, comes after the backward. Each extra inner step (steps > 1)
adds one more.

Containment: one request's failure (an exception, e.g. out of memory, anywhere in its part of
the step) fails that request alone. Batched phases that change no request state (entropy,
gradients, the apply-now tail) are retried one row at a time when they raise, and the rows that
still raise are failed; the phase that changes state (Adam, in the request's own slot) runs
per row. Failed rows are in `StepReport.failed`; the runner ends their requests with an error.
A non-finite entropy or gradient is not a failure: that update is skipped, counted and marked.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from vreason.kernels import controller_update, entropy_grad
from vreason.server.wire import StepRow

from .objective import entropy
from .state import ControllerState
from .tail import TailWeights, tail_acts, tail_input_grad, tail_logits, head_logits


class InjectedFailure(RuntimeError):
    """Raised by the test-only knob `fail_at_step`."""


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


@dataclass
class StepReport:
    """One step's outcome per row; `finish` reads the device values once, after sampling, and
    makes each row's `StepRow` (kept in `rows[i].last_row`)."""

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

    def advance(self) -> None:
        """Advance the switch of every live row (needs h_host)."""
        for i in self.h_rows:
            if i not in self.failed and i not in self.alpha:
                s = self.rows[i]
                alpha = s.switch.advance(self.h_host[i])
                self.alpha[i] = float(s.params.force_alpha) if s.params.force_alpha is not None else alpha
                self.ema[i] = s.switch.ema

    def finish(self) -> None:
        if self.h_host is None:
            self.h_host = dict(zip(self.h_rows, self.h.tolist())) if self.h_rows else {}
            self.advance()
        keys = [i for i in self.after if i not in self.failed]
        after = dict(zip(keys, torch.stack([self.after[i] for i in keys]).tolist())) if keys else {}
        for i in self.alpha:
            if i in self.failed:
                continue
            s = self.rows[i]
            s.last_row = self.step_rows[i] = StepRow(
                t=s.switch.t, entropy=self.h_host[i], ema=self.ema[i], alpha=self.alpha[i],
                updated=i in self.updated, skipped=i in self.skipped, entropy_after=after.get(i))


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
    dvn = new.float() - old.float()
    old.copy_(new)
    return dvn


def controller_step(rows: list[ControllerState], logits: torch.Tensor, upd: UpdateInputs | None,
                    weights: TailWeights) -> StepReport:
    """Advance every row by one generated step; writes apply-now logits into `logits` in place.

    logits: [R, V] the rows' controlled logits from the main forward. `upd` covers exactly the
    rows whose step t is a multiple of update_every. A non-finite entropy or gradient (or the
    test knob nan_at_step) skips that request's update; it is counted and marked in the trace.
    """
    report = StepReport(rows)

    def fail(i: int, e: BaseException) -> None:
        report.failed.setdefault(i, e)

    report.h_rows, report.h = rowwise(lambda ks: entropy(logits[ks]), list(range(len(rows))), fail)
    if upd is None or not upd.rows:
        return report
    hkv = rows[upd.rows[0]].slab.v0.shape[2]
    fail_k = lambda k, e: fail(upd.rows[k], e)  # noqa: E731 - keys of upd's rows

    def first_grad(ks: list[int]) -> torch.Tensor:  # dL/dVn for alpha = 1, with its finite flag
        for k in ks:
            s = rows[upd.rows[k]]
            if s.params.fail_at_step == s.switch.t + 1:
                raise InjectedFailure(f"injected controller failure at step {s.switch.t + 1} (fail_at_step)")
        ones = torch.ones(len(ks), dtype=torch.float32, device=logits.device)
        _, g1 = entropy_grad(logits[[upd.rows[k] for k in ks]], ones)
        acts = tail_acts(upd.o[ks], upd.residual[ks], weights)
        return group_grad(upd.a[ks], tail_input_grad(acts, g1, weights), hkv)

    ks, grad_vn = rowwise(first_grad, [k for k, i in enumerate(upd.rows) if i not in report.failed], fail_k)
    finite = torch.isfinite(grad_vn).flatten(1).all(1) if ks else torch.zeros(0, device=logits.device)
    host = torch.cat([report.h, finite.float()]).tolist() if report.h is not None else finite.tolist()
    n_h = len(report.h_rows)
    report.h_host = dict(zip(report.h_rows, host[:n_h]))  # the step's one host sync
    grad_ok = {k: host[n_h + j] > 0 for j, k in enumerate(ks)}
    report.advance()
    o = upd.o.float().clone()
    live, grad_of = [], {k: j for j, k in enumerate(ks)}
    for k, i in enumerate(upd.rows):
        if i in report.failed:
            continue
        s = rows[i]
        if s.switch.t % s.params.update_every != 0:
            raise RuntimeError(f"request {s.req_id}: update inputs at a step without an update")
        ok = math.isfinite(report.h_host[i]) and grad_ok.get(k, False)
        if not ok or s.params.nan_at_step == s.switch.t:
            report.skipped.add(i)
        else:
            live.append(k)
    for step in range(max(rows[i].params.steps for i in upd.rows)):
        if step > 0:  # later inner steps: forward with the new Vn, then backward
            live = [k for k in live if rows[upd.rows[k]].params.steps > step and upd.rows[k] not in report.failed]

            def next_grad(ks: list[int]) -> torch.Tensor:
                acts = tail_acts(o[ks], upd.residual[ks], weights)
                alpha = torch.tensor([report.alpha[upd.rows[k]] for k in ks], dtype=torch.float32, device=o.device)
                _, g = entropy_grad(head_logits(acts, weights), alpha)
                return group_grad(upd.a[ks], tail_input_grad(acts, g, weights), hkv)

            live, grad_vn = rowwise(next_grad, live, fail_k)
            if not live:
                break
            ok = torch.isfinite(grad_vn).flatten(1).all(1).tolist()
            for j, k in enumerate(live):
                if not ok[j]:
                    report.skipped.add(upd.rows[k])
            grad_of = {k: j for j, k in enumerate(live)}
            live = [k for j, k in enumerate(live) if ok[j]]
        for k in list(live):
            i = upd.rows[k]
            s = rows[i]
            scale = report.alpha[i] if step == 0 else 1.0
            try:  # changes the request's own slot only: a failure here is that request's alone
                dvn = _adam(s, grad_vn[grad_of[k], :s.num_positions] * scale)
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
    now, z = rowwise(lambda ks: tail_logits(o[ks], upd.residual[ks], weights), now, fail_k)
    if now:
        idx = [upd.rows[k] for k in now]
        logits[idx] = z.to(logits.dtype)
        for i, h_after in zip(idx, entropy(z)):
            report.after[i] = h_after
    return report
