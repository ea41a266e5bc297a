"""Controlled values Vn: V0 + dV, norm-restored per position and KV head.

The norm-restore formula (and its floor) has one home, the kernels' reference
(`vreason.kernels.controller_update.reference.norm_restore`), which the fused update kernel
implements and is tested against.
"""

from __future__ import annotations

import torch

from vreason.kernels.controller_update.reference import norm_restore as _norm_restore


def controlled_values(v0: torch.Tensor, delta: torch.Tensor, norm_restore: str) -> torch.Tensor:
    """v0, delta: [..., D] -> Vn [..., D] (differentiable in delta); norm_restore "token" or "none"."""
    u = v0 + delta
    return u if norm_restore == "none" else _norm_restore(u, v0)
