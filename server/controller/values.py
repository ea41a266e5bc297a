"""Controlled values: Vn = (V0 + dV) / max(||V0 + dV||, eps) * ||V0|| per position and KV head."""

from __future__ import annotations

import torch

NORM_EPS = 1e-6


def controlled_values(v0: torch.Tensor, delta: torch.Tensor, norm_restore: str) -> torch.Tensor:
    """v0, delta: [..., D] -> Vn [..., D] (differentiable in delta)."""
    u = v0 + delta
    if norm_restore == "none":
        return u
    n = torch.linalg.vector_norm(u, dim=-1, keepdim=True).clamp_min(NORM_EPS)
    return u * (torch.linalg.vector_norm(v0, dim=-1, keepdim=True) / n)
