"""One generated step of V-Reason for a batch of controlled rows (DESIGN section 2).

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from vreason.kernels import controller_update, entropy_grad

from .objective import entropy
from .state import ControllerState
from .tail import TailWeights, tail_acts, tail_input_grad, tail_logits, head_logits


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
    """Device values of one step that the trace needs; `finish` reads them after sampling."""

    rows: list[ControllerState]
    h: torch.Tensor  # [R] H_t
    h_host: list[float] | None = None
    after: dict[int, torch.Tensor] = field(default_factory=dict)  # row -> entropy after apply now

    def finish(self) -> None:
        """Advance the switches of rows not advanced yet and complete the trace rows (one read)."""
        if self.h_host is None:
            self.h_host = self.h.tolist()
            for i, s in enumerate(self.rows):
                _advance(s, self.h_host[i])
        if self.after:
            keys = list(self.after)
            for i, h_after in zip(keys, torch.stack([self.after[i] for i in keys]).tolist()):
                self.rows[i].trace[-1]["entropy_after"] = h_after


def _advance(s: ControllerState, h: float) -> float:
    alpha = s.switch.advance(h)
    if s.params.force_alpha is not None:
        alpha = float(s.params.force_alpha)
    s.trace.append({"entropy": h, "ema": s.switch.ema, "alpha": alpha, "updated": False})
    return alpha


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
    report = StepReport(rows, entropy(logits))
    if upd is None or not upd.rows:
        return report
    hkv = rows[upd.rows[0]].slab.v0.shape[2]
    ones = torch.ones(len(upd.rows), dtype=torch.float32, device=logits.device)
    _, g1 = entropy_grad(logits[upd.rows], ones)
    grad_vn = group_grad(upd.a, tail_input_grad(tail_acts(upd.o, upd.residual, weights), g1, weights), hkv)
    finite = torch.isfinite(grad_vn).flatten(1).all(1)
    host = torch.cat([report.h, finite.float()]).tolist()  # the step's one host sync
    report.h_host = host[:len(rows)]
    alphas = [_advance(s, h) for s, h in zip(rows, report.h_host)]
    o = upd.o.float().clone()
    live = []
    for k, i in enumerate(upd.rows):
        s, h = rows[i], report.h_host[i]
        if s.switch.t % s.params.update_every != 0:
            raise RuntimeError(f"request {s.req_id}: update inputs at a step without an update")
        finite = math.isfinite(h) and host[len(rows) + k] > 0
        s.update_failed = not finite or s.params.nan_at_step == s.switch.t
        if not s.update_failed:
            live.append(k)
    for step in range(max(rows[i].params.steps for i in upd.rows)):
        if step > 0:  # later inner steps: forward with the new Vn, then backward
            live = [k for k in live if rows[upd.rows[k]].params.steps > step]
            if not live:
                break
            acts = tail_acts(o[live], upd.residual[live], weights)
            alpha = torch.tensor([alphas[upd.rows[k]] for k in live], dtype=torch.float32, device=o.device)
            _, g = entropy_grad(head_logits(acts, weights), alpha)
            grad_vn = group_grad(upd.a[live], tail_input_grad(acts, g, weights), hkv)
            ok = torch.isfinite(grad_vn).flatten(1).all(1).tolist()
            for j, k in enumerate(list(live)):
                if not ok[j]:
                    rows[upd.rows[k]].update_failed = True
            live_now = [(j, k) for j, k in enumerate(live) if ok[j]]
            scale = [1.0] * len(live)
        else:
            live_now = [(k, k) for k in live]
            scale = [alphas[upd.rows[k]] for k in range(len(upd.rows))]
        for j, k in live_now:
            s = rows[upd.rows[k]]
            dvn = _adam(s, grad_vn[j, :s.num_positions] * scale[j])
            o[k] += group_apply(upd.a[k, :, :s.num_positions], dvn, hkv)
        live = [k for _, k in live_now]
    now = []
    for k, i in enumerate(upd.rows):
        s = rows[i]
        if s.update_failed:
            s.skipped_updates += 1
            s.trace[-1]["skipped"] = True
            continue
        s.updates += 1
        s.trace[-1]["updated"] = True
        if s.params.apply == "now":
            now.append(k)
    if now:
        z = tail_logits(o[now], upd.residual[now], weights)
        idx = [upd.rows[k] for k in now]
        logits[idx] = z.to(logits.dtype)
        for i, h_after in zip(idx, entropy(z)):
            report.after[i] = h_after
    return report
