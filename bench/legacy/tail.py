"""[frozen copy of server/controller/tail.py at fc1418b for bench/step7b.py] The last decoder layer's tail in plain fp32 torch (differentiable; no vLLM ops).

o (attention output, heads concatenated) -> o_proj -> + residual -> post-attention RMSNorm ->
SwiGLU MLP -> + residual -> final RMSNorm -> lm_head -> logits. vLLM's fused norm and
activation ops mutate in place or have no backward, so the tail is re-written here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TailWeights:
    """Plain weight tensors of layer L's tail, the final norm and lm_head (read, never written)."""

    o_proj: torch.Tensor  # [hidden, Hq*D]
    post_norm: torch.Tensor  # [hidden]
    gate_up: torch.Tensor  # [2*I, hidden] (gate rows first, then up rows)
    down: torch.Tensor  # [hidden, I]
    final_norm: torch.Tensor  # [hidden]
    lm_head: torch.Tensor  # [vocab, hidden]
    eps: float

    def nbytes(self) -> int:
        ts = (self.o_proj, self.post_norm, self.gate_up, self.down, self.final_norm, self.lm_head)
        return sum(t.numel() * t.element_size() for t in ts)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.float()


def tail_logits(o: torch.Tensor, residual: torch.Tensor, w: TailWeights) -> torch.Tensor:
    """o: [R, Hq*D], residual (stream entering layer L): [R, hidden] -> logits [R, vocab] fp32."""
    h_mid = residual.float() + F.linear(o.float(), w.o_proj.float())
    x = rms_norm(h_mid, w.post_norm, w.eps)
    gate, up = F.linear(x, w.gate_up.float()).chunk(2, dim=-1)
    h_out = h_mid + F.linear(F.silu(gate) * up, w.down.float())
    return F.linear(rms_norm(h_out, w.final_norm, w.eps), w.lm_head.float())
