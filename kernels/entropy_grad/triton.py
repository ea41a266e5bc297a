"""Triton kernel: row entropy of softmax(logits) and the gradient of alpha * (log V - H).

One program per row sweeps the vocabulary twice: first an online (max, sum, first-moment)
reduction kept per lane and merged at the end, then a pass writing the gradient. No temporary
of the logits' size is allocated besides the gradient itself.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._utils import Launch, next_power_of_2

# a finite floor for the running max: a lane that has only seen -inf keeps s = t = 0 without
# producing inf - inf (a constexpr: Triton's compiler reads no other globals)
_M_FLOOR = tl.constexpr(-1.0e30)


@triton.jit
def _entropy_grad_kernel(
    x_ptr,  # [R, V] logits, fp32 / bf16 / fp16
    a_ptr,  # [R] fp32, alpha
    h_ptr,  # [R] fp32, entropy out
    g_ptr,  # [R, V] fp32, gradient out
    V,
    stride_xr,
    stride_xv,
    stride_gr,
    BLOCK_V: tl.constexpr,
):
    i_r = tl.program_id(0).to(tl.int64)
    o_v = tl.arange(0, BLOCK_V).to(tl.int64)
    # per lane: m = max x, s = sum exp(x - m), t = sum exp(x - m) * (x - m)
    b_m = tl.full([BLOCK_V], _M_FLOOR, tl.float32)
    b_s = tl.zeros([BLOCK_V], tl.float32)
    b_t = tl.zeros([BLOCK_V], tl.float32)
    for start in range(0, V, BLOCK_V):
        o_x = start + o_v
        b_x = tl.load(x_ptr + i_r * stride_xr + o_x * stride_xv, mask=o_x < V, other=float("-inf"))
        b_x = b_x.to(tl.float32)
        b_m_new = tl.maximum(b_m, b_x)
        b_c = tl.exp(b_m - b_m_new)
        b_e = tl.exp(b_x - b_m_new)
        b_t = b_c * (b_t + (b_m - b_m_new) * b_s) + b_e * tl.where(b_e > 0, b_x - b_m_new, 0.0)
        b_s = b_s * b_c + b_e
        b_m = b_m_new
    m = tl.max(b_m, 0)
    b_c = tl.exp(b_m - m)
    s = tl.sum(b_s * b_c, 0)
    t = tl.sum(b_c * (b_t + (b_m - m) * b_s), 0)
    log_s = tl.log(s)
    # H = -sum p (x - m - log s) = log s - t / s
    h = log_s - t / s
    tl.store(h_ptr + i_r, h)

    alpha = tl.load(a_ptr + i_r)
    for start in range(0, V, BLOCK_V):
        o_x = start + o_v
        m_x = o_x < V
        b_x = tl.load(x_ptr + i_r * stride_xr + o_x * stride_xv, mask=m_x, other=float("-inf"))
        b_logp = b_x.to(tl.float32) - m - log_s
        b_p = tl.exp(b_logp)
        # p = 0 where logits are -inf: keep 0 * log 0 = 0 rather than NaN
        b_g = alpha * b_p * (tl.where(b_p > 0, b_logp, 0.0) + h)
        tl.store(g_ptr + i_r * stride_gr + o_x, b_g, mask=m_x)


def entropy_grad_launches(logits: torch.Tensor,
                          alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[Launch]]:
    """The outputs (allocated, not yet written) and the launch that fills them."""
    R, V = logits.shape
    entropy = torch.empty(R, dtype=torch.float32, device=logits.device)
    grad = torch.empty(R, V, dtype=torch.float32, device=logits.device)
    BLOCK_V = min(4096, next_power_of_2(V))
    launch = Launch(_entropy_grad_kernel, (R,), (
        logits, alpha, entropy, grad, V, logits.stride(0), logits.stride(1), grad.stride(0),
    ), dict(BLOCK_V=BLOCK_V, num_warps=8 if BLOCK_V >= 2048 else 4))
    return entropy, grad, [launch]


def entropy_grad_triton(logits: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch on inputs already checked by `vreason.kernels.entropy_grad` (R > 0)."""
    entropy, grad, launches = entropy_grad_launches(logits, alpha)
    for launch in launches:
        launch()
    return entropy, grad
