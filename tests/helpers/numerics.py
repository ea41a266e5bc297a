"""Float64 ground truths and error bounds derived from the reduction length, for kernel tests.

Why: an fp32 reduction's result depends on the order of its additions, and that order differs
between CPUs (vector width, BLAS build), torch versions and Triton tilings. Two fp32 results
compared with a fixed tolerance pass on one machine and fail on the next (an fp32 entropy over
V = 151936 drifted by 1.1e-5 relative between two EPYC hosts). So each kernel output AND its fp32
torch reference are compared with a float64 ground truth, within a bound derived below.

The bound for a sum of n terms in any order (Higham & Mary, "A new approach to probabilistic
rounding error analysis", SIAM J. Sci. Comput. 41(5), 2019, Theorems 2.4 and 3.1): modelling
the rounding errors as independent and mean-zero,

    |fl(x_1 + ... + x_n) - sum x_i|  <=  lambda * sqrt(n) * u * sum |x_i|

with probability at least 1 - 2n exp(-lambda^2 / 2) (to first order in u). LAMBDA = 7 makes
that probability 1 - 7e-6 at n = 151936, the largest reduction tested; the worst-case bound
(n * u instead of lambda * sqrt(n) * u) would be ~55x looser there and could hide real bugs.
Every elementwise operation (exp, log, a product, a rounding to the output dtype) adds its own
few units of roundoff, counted separately with ELEMENTWISE_ULPS.
"""

from __future__ import annotations

import math

import torch

LAMBDA = 7.0
ELEMENTWISE_ULPS = 4.0

# unit roundoff (half an ulp at 1.0) of the formats the kernels store or multiply in
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
TF32_ROUNDOFF = 2.0**-11  # tensor-core inputs of tl.dot(..., input_precision="tf32")
FP32 = UNIT_ROUNDOFF[torch.float32]


def sum_roundoff(n: int, u: float = FP32) -> float:
    """Relative (to sum |x_i|) error bound of an fp32 sum of n terms, in any order."""
    return LAMBDA * math.sqrt(max(n, 1)) * u


def entropy_grad_truth(logits: torch.Tensor, alpha: torch.Tensor):
    """Entropy and gradient in float64 from the same (already rounded) inputs, and the per-row
    bounds (absolute on the entropy, on the row norm of the gradient) that any correct fp32
    implementation meets.

    Derivation, per row, with logp = x - m - log Z and eps the error of log Z:
    - log Z: a sum of n positive terms (condition 1) then a log: |eps| <= s + 2u, s = sum_roundoff(n).
    - Shifting every logp by eps changes H = -sum p logp by eps * (H - 1) (first order), and the
      final sum of n same-sign terms adds s * H: |dH| <= |eps| |H - 1| + s H (+ elementwise).
    - g = alpha p (logp + H): |dg| <= |eps| |g| + (|eps| + |dH|) |alpha| p (+ elementwise).
    - Elementwise: logp carries u (|x - m| + |logp|) of its own rounding, which enters p and
      (logp + H); counted with ELEMENTWISE_ULPS.
    """
    x = logits.double()
    a = alpha.double()[:, None]
    n = x.shape[-1]
    logp = torch.log_softmax(x, dim=-1)
    p = logp.exp()
    finite = p > 0
    plogp = torch.where(finite, p * logp, torch.zeros_like(p))
    entropy = -plogp.sum(-1)
    grad = a * (plogp + p * entropy[:, None])

    u, s = FP32, sum_roundoff(n)
    m = torch.where(finite, x, torch.full_like(x, -math.inf)).amax(-1, keepdim=True)
    zero = torch.zeros_like(x)
    lp_abs = torch.where(finite, logp.abs(), zero)  # masked tokens (p = 0) carry no error
    local = torch.where(finite, u * ((x - m).abs() + lp_abs + 1), zero)  # logp's own rounding
    eps = s + 2 * u
    elem_h = ELEMENTWISE_ULPS * (p * local * (1 + lp_abs)).sum(-1)
    tol_h = eps * (entropy - 1).abs() + s * entropy + elem_h
    g_norm, p_norm = grad.norm(dim=-1), (a * p).norm(dim=-1)
    elem_g = ELEMENTWISE_ULPS * (a * p * local * ((lp_abs - entropy[:, None]).abs() + 1)).norm(dim=-1)
    tol_g = eps * g_norm + (eps + tol_h) * p_norm + elem_g + ELEMENTWISE_ULPS * u * g_norm
    return entropy, grad, tol_h, tol_g


def dense_context(k, v, block_table, seq_lens, vid_start, vid_len, values):
    """Gather each row's context through its block table into dense float64 [R, L, Hkv, D]
    keys and values (controlled values overlaid at the video positions) and a validity mask."""
    R = block_table.shape[0]
    bs = k.shape[2]
    L = int(seq_lens.max())
    t = torch.arange(L, device=k.device)
    valid = t[None] < seq_lens[:, None].long()
    blocks = torch.where(valid, block_table[:, t // bs].long(), 0)
    offs = (t % bs).expand(R, L)
    K, V = k[blocks, :, offs].double(), v[blocks, :, offs].double()
    idx = torch.full((R, L), -1, dtype=torch.long, device=k.device)
    for r in range(R):
        base = 0
        for s, n in zip(vid_start[r].tolist(), vid_len[r].tolist()):
            idx[r, s : s + n] = torch.arange(base, base + n)
            base += n
    rows, ts = (idx >= 0).nonzero(as_tuple=True)
    V[rows, ts] = values[rows, :, idx[rows, ts]].double()
    return K, V, valid, idx


def attention_truth(q, k, v, block_table, seq_lens, vid_start, vid_len, values, scale,
                    out_dtype: torch.dtype, tf32_pv: bool = False, truncates: bool = False):
    """Controlled attention in float64 and per-(row, head) bounds on the norm of the output and
    of the video weights that any correct fp32-accumulating implementation meets.

    Derivation, per query head, with L the context length and D the head dim:
    - scores s_j = scale q.k_j: a D-term sum, |ds_j| <= sum_roundoff(D) scale sum_d |q_d k_jd|
      plus a few ulps of |s_j| (the scale, the exp2 change of base).
    - a_j = exp(s_j - m) / l, l an L-term positive sum: |da_j| / a_j <= rho_j =
      |ds_j| + max |ds| + sum_roundoff(L) + a few ulps (m cancels).
    - out = sum_j a_j v_j: |dout| <= sum_j rho_j a_j |v_j| + (sum_roundoff(L) + 2 u_pv)
      sum_j a_j |v_j|, u_pv = tf32 roundoff when p @ v runs on tensor cores, then the rounding
      of out to its dtype: u_out |out|, or 2 u_out |out| where the conversion truncates
      (`truncates`: Triton's CPU interpreter converts fp32 to bf16 by dropping bits, not by
      round-to-nearest-even as on a GPU).
    """
    R, Hq, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    K, V, valid, idx = dense_context(k, v, block_table, seq_lens, vid_start, vid_len, values)
    L = K.shape[1]
    qd = q.double().view(R, Hkv, G, D)
    s = torch.einsum("rhgd,rlhd->rhgl", qd, K) * scale
    s = s.masked_fill(~valid[:, None, None], -math.inf)
    p = torch.softmax(s, dim=-1)
    out = torch.einsum("rhgl,rlhd->rhgd", p, V)
    P = values.shape[2]
    rows, ts = (idx >= 0).nonzero(as_tuple=True)
    weights = torch.zeros(R, Hkv, G, P, dtype=torch.float64, device=q.device)
    weights[rows, :, :, idx[rows, ts]] = p[rows, :, :, ts]

    u = FP32
    s_abs = torch.einsum("rhgd,rlhd->rhgl", qd.abs(), K.abs()) * scale
    ds = sum_roundoff(D) * s_abs + ELEMENTWISE_ULPS * u * s.abs().nan_to_num(posinf=0.0, neginf=0.0)
    ds = ds.masked_fill(~valid[:, None, None], 0.0)
    rho = ds + ds.amax(-1, keepdim=True) + sum_roundoff(L) + ELEMENTWISE_ULPS * u
    u_pv = TF32_ROUNDOFF if tf32_pv else u
    mass = torch.einsum("rhgl,rlhd->rhgd", p * (rho + sum_roundoff(L) + 2 * u_pv), V.abs())
    tol_out = mass.norm(dim=-1) + (2 if truncates else 1) * UNIT_ROUNDOFF[out_dtype] * out.norm(dim=-1)
    rho_w = torch.zeros_like(weights)
    rho_w[rows, :, :, idx[rows, ts]] = rho[rows, :, :, ts]
    tol_w = (weights * rho_w).norm(dim=-1)
    return out.reshape(R, Hq, D), weights.reshape(R, Hq, P), tol_out.reshape(R, Hq), tol_w.reshape(R, Hq)


def assert_within(name: str, truth: torch.Tensor, out: torch.Tensor, tol: torch.Tensor, dims: int = 1) -> None:
    """No NaN, and the error norm over the last `dims` dims is within `tol` everywhere."""
    assert out.shape == truth.shape, f"{name}: shape {tuple(out.shape)} != {tuple(truth.shape)}"
    out, truth = out.double().cpu(), truth.double().cpu()
    assert not out.isnan().any(), f"{name}: NaN at {out.isnan().nonzero()[:5].tolist()}"
    diff = out - truth
    err = diff.abs() if dims == 0 else diff.flatten(-dims).norm(dim=-1)
    tol = tol.double().cpu().expand_as(err)
    ratio = (err / tol.clamp_min(1e-300)).max().item()
    worst = (err / tol.clamp_min(1e-300)).argmax().item()
    assert ratio <= 1.0, (f"{name}: error {err.flatten()[worst].item():.3g} exceeds its derived bound "
                          f"{tol.flatten()[worst].item():.3g} (x{ratio:.2f}) at flat index {worst}")
