"""Entropy and the EMA/peak switch (docs/design.md section 2).

The entropy formula's home is the kernels' reference (`vreason.kernels.entropy_grad.reference`):
it is the spec the Triton kernel is tested against, and it keeps -inf (masked) logits finite.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vreason.kernels.entropy_grad.reference import entropy_reference


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of softmax(logits) per row, in fp32. logits: [R, V] -> [R]."""
    return entropy_reference(logits)


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
