"""[frozen copy of server/controller/step.py at fc1418b for bench/step7b.py] One generated step of V-Reason for a batch of controlled rows (DESIGN section 2).

Inputs come from the runner after the model forward: the stock logits of each controlled row
and, for rows that need it, the last layer's attention output `o` and weights `a` at the
controlled positions, computed with the request's current controlled values Vn. Because the
query and keys do not change during the inner steps, o = c + a . Vn with c constant, so the
Adam steps need only dense ops plus the tail. Requests of different video lengths are padded
to one [S, Hkv, Pmax, D] batch (padding has V0 = 0 and a = 0, so it gets no gradient): one
tail forward and one backward per inner step serve every updating request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vreason.kernels import controller_update, entropy_grad

from vreason.server.controller.objective import entropy
from .state import ControllerState
from .tail import TailWeights, tail_logits
from vreason.server.controller.values import controlled_values


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


def _pad(t: torch.Tensor, p_max: int, dim: int) -> torch.Tensor:
    pad = [0, 0] * (t.dim() - 1 - dim) + [0, p_max - t.shape[dim]]
    return F.pad(t, pad)


def _batched_vn(v0, delta, norm_rows):
    """Controlled values of a padded batch; norm restore only for rows flagged in norm_rows."""
    normed = controlled_values(v0, delta, "token")
    return torch.where(norm_rows[:, None, None, None], normed, v0 + delta)


def _attend(c, a, vn):
    """c: [S, Hq, D], a: [S, Hq, P], vn: [S, Hkv, P, D] -> o: [S, Hq*D]."""
    vn = vn.repeat_interleave(a.shape[1] // vn.shape[1], dim=1)
    return (c + torch.einsum("sgp,sgpd->sgd", a, vn)).flatten(1)


class _Batch:
    """The updating requests' state gathered into padded tensors, written back by `store`."""

    def __init__(self, rows: list[RowInputs]):
        self.rows = rows
        self.states = [r.state for r in rows]
        self.p_max = max(1, max(s.num_positions for s in self.states))
        stack = lambda ts: torch.stack([_pad(t.float(), self.p_max, 1) for t in ts])  # noqa: E731
        self.v0 = stack([s.v0 for s in self.states])
        self.delta = stack([s.delta for s in self.states])
        self.exp_avg = stack([s.exp_avg for s in self.states])
        self.exp_avg_sq = stack([s.exp_avg_sq for s in self.states])
        self.a = stack([r.a for r in rows])
        self.residual = torch.stack([r.residual.float() for r in rows])
        self.norm_rows = [s.params.norm_restore == "token" for s in self.states]
        norm = torch.tensor(self.norm_rows, device=self.v0.device)
        self.vn = _batched_vn(self.v0, self.delta, norm)
        o = torch.stack([r.o.float() for r in rows])
        self.c = o - _attend(torch.zeros_like(o), self.a, self.vn).view_as(o)

    def store(self) -> None:
        for i, s in enumerate(self.states):
            p = s.num_positions
            s.delta.copy_(self.delta[i, :, :p])
            s.exp_avg.copy_(self.exp_avg[i, :, :p])
            s.exp_avg_sq.copy_(self.exp_avg_sq[i, :, :p])

    def attention_out(self, idx: list[int], vn: torch.Tensor) -> torch.Tensor:
        """Attention output [len(idx), Hq*D] of requests `idx` with controlled values `vn`."""
        return _attend(self.c[idx], self.a[idx], vn)

    def adam(self, idx: list[int], grad_vn: torch.Tensor) -> None:
        """One fused Adam step (norm-restore backward, Adam, norm restore) for requests `idx`."""
        for norm in (True, False):
            sub = [j for j, i in enumerate(idx) if self.norm_rows[i] == norm]
            if not sub:
                continue
            rows = [idx[j] for j in sub]
            d, m, v = self.delta[rows], self.exp_avg[rows], self.exp_avg_sq[rows]
            per_request = d[0].numel() // d.shape[-1]  # (head, position) vectors of one request
            step = torch.tensor([self.states[i].adam_step for i in rows], dtype=torch.int32)
            lr = torch.tensor([self.states[i].params.lr for i in rows], dtype=torch.float32)
            flat = lambda t: t.reshape(-1, t.shape[-1])  # noqa: E731
            vn = controller_update(flat(d), flat(m), flat(v), flat(self.v0[rows]), flat(grad_vn[sub].contiguous()),
                                   step.repeat_interleave(per_request).to(d.device),
                                   lr.repeat_interleave(per_request).to(d.device), norm_restore=norm)
            self.delta[rows], self.exp_avg[rows], self.exp_avg_sq[rows] = d, m, v
            self.vn[rows] = vn.view_as(d)


def _optimise(b: _Batch, alphas: list[float], weights: TailWeights) -> None:
    """Run each request's `steps` Adam steps; a non-finite loss or gradient stops its update.

    One fused op gives the entropy and dL/dlogits; autograd only carries dL/dlogits back
    through the tail to the controlled values; the fused update op does the rest.
    """
    for k in range(max(s.params.steps for s in b.states)):
        live = [i for i, s in enumerate(b.states) if s.params.steps > k and not s.update_failed]
        if not live:
            break
        alpha = torch.tensor([alphas[i] for i in live], dtype=torch.float32, device=b.vn.device)
        with torch.inference_mode(False), torch.enable_grad():
            vn = b.vn[live].clone().requires_grad_(True)
            z = tail_logits(b.attention_out(live, vn), b.residual[live], weights)
            h, grad_z = entropy_grad(z.detach(), alpha)
            (grad_vn,) = torch.autograd.grad(z, vn, grad_outputs=grad_z)
        loss = alpha * (math.log(z.shape[-1]) - h)
        ok_mask = torch.isfinite(loss) & torch.isfinite(grad_vn).flatten(1).all(1)
        ok = []
        for j, i in enumerate(live):
            if bool(ok_mask[j]):
                b.states[i].adam_step += 1
                ok.append(j)
            else:
                b.states[i].update_failed = True
        if ok:
            b.adam([live[j] for j in ok], grad_vn[ok])


def controller_step(rows: list[RowInputs], weights: TailWeights) -> torch.Tensor:
    """Advance every row by one generated step; returns the logits to sample from, [R, V].

    Appends one trace row per request: entropy H_t, EMA E_t, alpha_t and whether an update ran
    (plus the entropy of the updated logits when they are used). A non-finite loss or gradient
    skips that request's update (counted in skipped_updates).
    """
    out = torch.stack([r.logits for r in rows]).clone()
    with torch.no_grad():
        with_offset = [i for i, r in enumerate(rows) if r.state.has_offset]
        if with_offset:
            o = torch.stack([rows[i].o.reshape(-1) for i in with_offset])
            res = torch.stack([rows[i].residual for i in with_offset])
            out[with_offset] = tail_logits(o, res, weights).to(out.dtype)
        h = entropy(out).tolist()
    alphas, updating = [], []
    for i, r in enumerate(rows):
        s = r.state
        alpha = s.switch.advance(h[i])
        if s.params.force_alpha is not None:
            alpha = float(s.params.force_alpha)
        s.trace.append({"entropy": h[i], "ema": s.switch.ema, "alpha": alpha, "updated": False})
        if s.switch.t % s.params.update_every != 0:
            continue
        if r.o is None or r.a is None:
            raise RuntimeError(f"request {s.req_id}: update step without an attention pass")
        if not math.isfinite(h[i]) or s.params.nan_at_step == s.switch.t:
            alpha = math.nan  # poisons this row's loss: its update is skipped, not applied
        s.update_failed = False
        alphas.append(alpha)
        updating.append(i)
    if not updating:
        return out
    batch = _Batch([rows[i] for i in updating])
    _optimise(batch, alphas, weights)
    batch.store()
    now = []
    for k, (i, s) in enumerate(zip(updating, batch.states)):
        if s.update_failed:
            s.skipped_updates += 1
            s.trace[-1]["skipped"] = True
            continue
        s.updates += 1
        s.trace[-1]["updated"] = True
        if s.params.apply == "now":
            now.append(k)
    if now:
        with torch.no_grad():
            z = tail_logits(batch.attention_out(now, batch.vn[now]), batch.residual[now], weights)
        out[[updating[k] for k in now]] = z.to(out.dtype)
        for k, h_after in zip(now, entropy(z).tolist()):
            batch.states[k].trace[-1]["entropy_after"] = h_after
    return out


def pad_values(states: list[ControllerState]) -> torch.Tensor:
    """The current Vn of each request, zero-padded to the longest: [R, Hkv, Pmax, D]."""
    p_max = max(1, max(s.num_positions for s in states))
    with torch.no_grad():
        return torch.stack([_pad(controlled_values(s.v0, s.delta, s.params.norm_restore), p_max, 1)
                            for s in states])
