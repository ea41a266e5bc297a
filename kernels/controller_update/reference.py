"""Pure-torch reference (the spec): norm-restore backward, one Adam step on delta, new values."""

from __future__ import annotations

import torch

# norm restore divides by max(||v0 + delta||, NORM_FLOOR)
NORM_FLOOR = 1e-6
# torch.optim.Adam's defaults, the defaults of both entry points (this spec and controller_update)
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8


def norm_restore(u: torch.Tensor, v0: torch.Tensor) -> torch.Tensor:
    """u rescaled to the norm of v0 over the last dim: u * ||v0|| / max(||u||, 1e-6)."""
    return u * v0.norm(dim=-1, keepdim=True) / u.norm(dim=-1, keepdim=True).clamp_min(NORM_FLOOR)


def adam_scalars(
    step: torch.Tensor, lr: torch.Tensor, beta1: float, beta2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row lr / (1 - beta1^t) and sqrt(1 - beta2^t), in fp64 then fp32 like torch.optim.Adam.

    fp32 alone is not enough: 1 - beta2 at t = 1 loses ~1e-5 of relative precision.
    """
    t = step.double()
    step_size = lr.double() / (1.0 - beta1**t)
    bc2_sqrt = (1.0 - beta2**t).sqrt()
    return step_size.float(), bc2_sqrt.float()


def controller_update_reference(
    delta: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    v0: torch.Tensor,
    grad_vn: torch.Tensor,
    step: torch.Tensor,
    lr: torch.Tensor,
    beta1: float = BETA1,
    beta2: float = BETA2,
    eps: float = EPS,
    norm_restore_on: bool = True,
) -> torch.Tensor:
    """Update delta, exp_avg, exp_avg_sq in place and return the new controlled values [N, D]."""
    g = grad_vn
    if norm_restore_on:
        u = v0 + delta
        u_norm = u.norm(dim=-1, keepdim=True)
        n = u_norm.clamp_min(NORM_FLOOR)
        s = v0.norm(dim=-1, keepdim=True)
        u_hat = u / n
        # d(u s / n)/du = (s / n)(I - u_hat u_hat^T) while the clamp is inactive, s / floor otherwise
        g_proj = (s / n) * (g - (g * u_hat).sum(dim=-1, keepdim=True) * u_hat)
        g = torch.where(u_norm >= NORM_FLOOR, g_proj, g * (s / NORM_FLOOR))
    step_size, bc2_sqrt = adam_scalars(step, lr, beta1, beta2)
    exp_avg.lerp_(g, 1.0 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
    denom = exp_avg_sq.sqrt() / bc2_sqrt[:, None] + eps
    delta.sub_(step_size[:, None] * exp_avg / denom)
    return norm_restore(v0 + delta, v0) if norm_restore_on else v0 + delta
