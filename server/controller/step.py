"""One generated step of V-Reason for a batch of controlled rows (DESIGN section 2).

Inputs come from the runner after the model forward: the stock logits of each controlled row
and, for rows that need it, the last layer's attention output `o` and weights `a` at the
controlled positions, computed with the request's current controlled values Vn. Because the
query and keys do not change during the inner steps, o = c + a . Vn with c constant, so the
Adam steps need only dense ops plus the tail; one tail pass serves every updating row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .adam import adam_step
from .objective import entropy
from .state import ControllerState
from .tail import TailWeights, tail_logits
from .values import controlled_values


@dataclass
class RowInputs:
    """The per-row tensors of one step. o/a are None when the row needs no attention pass."""

    state: ControllerState
    logits: torch.Tensor  # [V] stock logits of this row
    residual: torch.Tensor  # [hidden] stream entering layer L
    o: torch.Tensor | None = None  # [Hq, D] attention output with the current Vn
    a: torch.Tensor | None = None  # [Hq, P] attention weights at the controlled positions


def needs_attention(state: ControllerState) -> bool:
    """Whether the coming step needs the controlled attention pass for this request."""
    return state.has_offset or state.updates_at_next_step()


def _current_vn(s: ControllerState) -> torch.Tensor:
    return controlled_values(s.v0, s.delta, s.params.norm_restore)


def _attend(c: torch.Tensor, a: torch.Tensor, vn: torch.Tensor) -> torch.Tensor:
    """c: [Hq, D], a: [Hq, P], vn: [Hkv, P, D] -> o: [Hq*D] (query head g reads KV head g // G)."""
    vn = vn.repeat_interleave(a.shape[0] // vn.shape[0], dim=0)
    return (c + torch.einsum("gp,gpd->gd", a, vn)).reshape(-1)


def _optimise(rows: list[RowInputs], alphas: list[float], weights: TailWeights) -> list[torch.Tensor]:
    """Run `steps` Adam steps on each row's dV; returns each row's constant part c."""
    cs = []
    for r in rows:
        a = r.a.float()
        vn = _current_vn(r.state).repeat_interleave(a.shape[0] // r.state.v0.shape[0], dim=0)
        cs.append(r.o.float() - torch.einsum("gp,gpd->gd", a, vn))
    residual = torch.stack([r.residual.float() for r in rows])
    live = list(range(len(rows)))
    for _ in range(max(r.state.params.steps for r in rows)):
        live = [i for i in live if rows[i].state.params.steps > rows[i].state.adam_step_in_update]
        if not live:
            break
        with torch.inference_mode(False), torch.enable_grad():
            deltas = [rows[i].state.delta.clone().requires_grad_(True) for i in live]
            os = [_attend(cs[i], rows[i].a.float(),
                          controlled_values(rows[i].state.v0, d, rows[i].state.params.norm_restore))
                  for i, d in zip(live, deltas)]
            logits = tail_logits(torch.stack(os), residual[live], weights)
            alpha = torch.tensor([alphas[i] for i in live], dtype=torch.float32, device=logits.device)
            per_row = alpha * (math.log(logits.shape[-1]) - entropy(logits))
            grads = torch.autograd.grad(per_row.sum(), deltas, allow_unused=True)
        for i, loss, g in zip(live, per_row.detach(), grads):
            s = rows[i].state
            s.adam_step_in_update += 1
            if g is None or not bool(torch.isfinite(loss)) or not bool(torch.isfinite(g).all()):
                s.update_failed = True
                continue
            s.adam_step += 1
            adam_step(s.delta, g, s.exp_avg, s.exp_avg_sq, s.adam_step, s.params.lr)
    return cs


def controller_step(rows: list[RowInputs], weights: TailWeights) -> torch.Tensor:
    """Advance every row by one generated step; returns the logits to sample from, [R, V].

    Appends one trace row per request: entropy H_t, EMA E_t, alpha_t and whether an update ran.
    A non-finite loss or gradient skips that request's update (counted in skipped_updates).
    """
    out = torch.stack([r.logits for r in rows]).clone()
    with torch.no_grad():
        with_offset = [i for i, r in enumerate(rows) if r.state.has_offset]
        if with_offset:
            o = torch.stack([rows[i].o.reshape(-1) for i in with_offset])
            res = torch.stack([rows[i].residual for i in with_offset])
            out[with_offset] = tail_logits(o, res, weights).to(out.dtype)
        h = entropy(out)
    alphas, updating = [], []
    for i, r in enumerate(rows):
        s = r.state
        alpha = s.switch.advance(float(h[i]))
        if s.params.force_alpha is not None:
            alpha = float(s.params.force_alpha)
        s.trace.append({"entropy": float(h[i]), "ema": s.switch.ema, "alpha": alpha, "updated": False})
        if not math.isfinite(float(h[i])) or s.params.nan_at_step == s.switch.t:
            alpha = math.nan  # poisons this row's loss: its update is skipped, not applied
        alphas.append(alpha)
        if s.switch.t % s.params.update_every == 0:
            if r.o is None or r.a is None:
                raise RuntimeError(f"request {s.req_id}: update step without an attention pass")
            s.adam_step_in_update, s.update_failed = 0, False
            updating.append(i)
    if not updating:
        return out
    sub = [rows[i] for i in updating]
    cs = _optimise(sub, [alphas[i] for i in updating], weights)
    for i, r, c in zip(updating, sub, cs):
        s = r.state
        if s.update_failed:
            s.skipped_updates += 1
            s.trace[-1]["skipped"] = True
        else:
            s.updates += 1
            s.trace[-1]["updated"] = True
    now = [k for k, r in enumerate(sub) if r.state.params.apply == "now" and not r.state.update_failed]
    if now:
        with torch.no_grad():
            o = torch.stack([_attend(cs[k], sub[k].a.float(), _current_vn(sub[k].state)) for k in now])
            res = torch.stack([sub[k].residual for k in now])
            z = tail_logits(o, res, weights)
            out[[updating[k] for k in now]] = z.to(out.dtype)
            for k, h_after in zip(now, entropy(z).tolist()):
                sub[k].state.trace[-1]["entropy_after"] = h_after
    return out


def pad_values(states: list[ControllerState]) -> torch.Tensor:
    """The current Vn of each request, zero-padded to the longest: [R, Hkv, Pmax, D]."""
    p_max = max(s.num_positions for s in states)
    with torch.no_grad():
        return torch.stack([F.pad(_current_vn(s), (0, 0, 0, p_max - s.num_positions)) for s in states])
