"""Triton kernel: norm-restore backward, one Adam step on delta and the new controlled values.

Each program owns BLOCK_R whole rows of length D, so the per-row norms are plain in-register
reductions and every tensor is read and written exactly once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._utils import Launch, next_power_of_2
from .reference import NORM_FLOOR, adam_scalars


# N (rows = positions x kv heads) changes with every request: not specialised (Triton would
# compile a variant for N == 1 and one for N % 16 == 0), so one variant serves them all
@triton.jit(do_not_specialize=["N"])
def _controller_update_kernel(
    d_ptr,  # [N, D] fp32, delta, updated in place
    m_ptr,  # [N, D] fp32, Adam exp_avg, updated in place
    v_ptr,  # [N, D] fp32, Adam exp_avg_sq, updated in place
    v0_ptr,  # [N, D] fp32, original values
    g_ptr,  # [N, D] fp32, dL/dvn
    ss_ptr,  # [N] fp32, lr / (1 - beta1^t)
    bc_ptr,  # [N] fp32, sqrt(1 - beta2^t)
    vn_ptr,  # [N, D] fp32, new controlled values out
    N,
    D,
    stride_d, stride_m, stride_v, stride_v0, stride_g, stride_vn,
    beta1,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    eps,
    NORM_RESTORE: tl.constexpr,
    FLOOR: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    i_b = tl.program_id(0).to(tl.int64)
    o_r = i_b * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    o_d = tl.arange(0, BLOCK_D)
    m_r = o_r < N
    m_rd = m_r[:, None] & (o_d < D)[None, :]

    # [BLOCK_R, BLOCK_D]
    b_d = tl.load(d_ptr + o_r[:, None] * stride_d + o_d[None, :], mask=m_rd, other=0.0)
    b_v0 = tl.load(v0_ptr + o_r[:, None] * stride_v0 + o_d[None, :], mask=m_rd, other=0.0)
    b_g = tl.load(g_ptr + o_r[:, None] * stride_g + o_d[None, :], mask=m_rd, other=0.0)
    if NORM_RESTORE:
        b_u = b_v0 + b_d
        b_un = tl.sqrt(tl.sum(b_u * b_u, 1))
        b_n = tl.maximum(b_un, FLOOR)
        b_s = tl.sqrt(tl.sum(b_v0 * b_v0, 1))
        b_uh = b_u / b_n[:, None]
        b_gu = tl.sum(b_g * b_uh, 1)
        # the clamp at FLOOR is active for a (near) zero u: only the s / FLOOR scaling remains
        b_g = tl.where(
            (b_un >= FLOOR)[:, None],
            (b_s / b_n)[:, None] * (b_g - b_gu[:, None] * b_uh),
            b_g * (b_s / FLOOR)[:, None],
        )

    # torch.optim.Adam: exp_avg.lerp_(g, 1 - beta1), exp_avg_sq.mul_(beta2).addcmul_(g, g, 1 - beta2)
    p_m = m_ptr + o_r[:, None] * stride_m + o_d[None, :]
    b_m = tl.load(p_m, mask=m_rd, other=0.0)
    b_m = b_m + one_minus_beta1 * (b_g - b_m)
    p_v = v_ptr + o_r[:, None] * stride_v + o_d[None, :]
    b_v = tl.load(p_v, mask=m_rd, other=0.0)
    b_v = b_v * beta2 + one_minus_beta2 * b_g * b_g
    b_ss = tl.load(ss_ptr + o_r, mask=m_r, other=0.0)
    b_bc = tl.load(bc_ptr + o_r, mask=m_r, other=1.0)
    b_den = tl.sqrt(b_v) / b_bc[:, None] + eps
    b_d = b_d - b_ss[:, None] * b_m / b_den
    tl.store(p_m, b_m, mask=m_rd)
    tl.store(p_v, b_v, mask=m_rd)
    tl.store(d_ptr + o_r[:, None] * stride_d + o_d[None, :], b_d, mask=m_rd)

    b_vn = b_v0 + b_d
    if NORM_RESTORE:
        b_vnn = tl.maximum(tl.sqrt(tl.sum(b_vn * b_vn, 1)), FLOOR)
        b_vn = b_vn * (b_s / b_vnn)[:, None]
    tl.store(vn_ptr + o_r[:, None] * stride_vn + o_d[None, :], b_vn, mask=m_rd)


def controller_update_launches(
    delta: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    v0: torch.Tensor,
    grad_vn: torch.Tensor,
    step: torch.Tensor,
    lr: torch.Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    norm_restore: bool,
) -> tuple[torch.Tensor, list[Launch]]:
    """The output (allocated, not yet written) and the launch that fills it and updates in place."""
    N, D = delta.shape
    vn = torch.empty(N, D, dtype=torch.float32, device=delta.device)
    step_size, bc2_sqrt = adam_scalars(step, lr, beta1, beta2)
    BLOCK_D = next_power_of_2(D)
    # fixed per D (not shrunk to N): one variant for every request size; 8 warps keep the
    # [BLOCK_R, BLOCK_D] fp32 tiles at ~130 registers (4 warps: 255, bench/ptxas.py)
    BLOCK_R = max(1, 4096 // BLOCK_D)
    launch = Launch(_controller_update_kernel, (triton.cdiv(N, BLOCK_R),), (
        delta, exp_avg, exp_avg_sq, v0, grad_vn, step_size, bc2_sqrt, vn, N, D,
        delta.stride(0), exp_avg.stride(0), exp_avg_sq.stride(0), v0.stride(0), grad_vn.stride(0),
        vn.stride(0), beta1, 1.0 - beta1, beta2, 1.0 - beta2, eps,
    ), dict(NORM_RESTORE=norm_restore, FLOOR=NORM_FLOOR, BLOCK_R=BLOCK_R, BLOCK_D=BLOCK_D, num_warps=8))
    return vn, [launch]


def controller_update_triton(*args) -> torch.Tensor:
    """Launch on inputs already checked by `vreason.kernels.controller_update` (N > 0); the
    arguments of `controller_update_launches`."""
    vn, launches = controller_update_launches(*args)
    for launch in launches:
        launch()
    return vn
