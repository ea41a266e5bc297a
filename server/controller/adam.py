"""Adam with torch.optim.Adam semantics (bias correction, no weight decay), one request at a time."""

from __future__ import annotations

import math

import torch

BETA1, BETA2, EPS = 0.9, 0.999, 1e-8


@torch.no_grad()
def adam_step(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor,
              exp_avg_sq: torch.Tensor, step: int, lr: float) -> None:
    """In-place update of param, exp_avg, exp_avg_sq; `step` counts this step (>= 1)."""
    exp_avg.lerp_(grad, 1 - BETA1)
    exp_avg_sq.mul_(BETA2).addcmul_(grad, grad, value=1 - BETA2)
    bias_correction1 = 1 - BETA1 ** step
    bias_correction2 = 1 - BETA2 ** step
    denom = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(EPS)
    param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
