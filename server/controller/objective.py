"""Entropy, the EMA/peak switch, and the switching loss (DESIGN section 2)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of softmax(logits) per row, in fp32. logits: [R, V] -> [R]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def switching_loss(logits: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Sum over rows of alpha_r * KL(p_r || uniform) = alpha_r * (log|V| - H_r)."""
    return (alpha * (math.log(logits.shape[-1]) - entropy(logits))).sum()


@dataclass
class SwitchState:
    """E_t (EMA of entropy), M_t (its running peak) and the step counter t of one request."""

    beta: float
    ema: float = 0.0
    peak: float = 0.0
    t: int = 0
    peak_step: int | None = None

    def advance(self, h: float) -> float:
        """Consume H_t; return alpha_t (-1 below the running peak, +1 at or above it)."""
        self.t += 1
        self.ema = self.beta * self.ema + (1.0 - self.beta) * h
        alpha = -1.0 if self.ema < self.peak else 1.0
        if self.ema > self.peak:
            self.peak = self.ema
            self.peak_step = self.t
        return alpha
