"""One controller step on the controlled values: norm-restore backward, Adam, norm restore."""

from __future__ import annotations

import torch

from .._utils import CheckedOnce, check, check_dtype, check_same_device, check_shape, signature, use_triton
from .reference import BETA1, BETA2, EPS, controller_update_reference

__all__ = ["controller_update"]

_CHECKED = CheckedOnce()


def controller_update(
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
    norm_restore: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """One Adam step on delta given dL/dvn, where vn = normrestore(v0 + delta); returns new vn.

    Rows are (request, kv head, video position) vectors. With norm restore,
    vn = u * ||v0|| / max(||u||, NORM_FLOOR) for u = v0 + delta (`reference.norm_restore`), and
    dL/du is obtained from dL/dvn analytically; without it vn = u. The Adam step has torch.optim.Adam semantics (bias
    correction, no weight decay, no amsgrad); bias corrections are formed in fp64 as torch does.

    Args:
        delta, exp_avg, exp_avg_sq: [N, D] fp32, updated in place (unit stride along D).
        v0: [N, D] fp32, the original cached values.
        grad_vn: [N, D] fp32, dL/dvn at the current vn.
        step: [N] int32, each row's Adam step number after increment (>= 1).
        lr: [N] fp32, each row's learning rate.
        beta1, beta2, eps: Adam constants.
        norm_restore: rescale v0 + delta to ||v0|| per row.
        backend: "auto" (Triton on CUDA, torch otherwise), "torch", or "triton" (CUDA, or CPU
            under TRITON_INTERPRET=1).

    Returns:
        vn: [N, D] fp32, the controlled values after the step.
    """
    key = signature(delta, exp_avg, exp_avg_sq, v0, grad_vn, step, lr, beta1, beta2, eps)
    if key not in _CHECKED:
        _check(delta, exp_avg, exp_avg_sq, v0, grad_vn, step, lr, beta1, beta2, eps)
        _CHECKED.add(key)
    N, D = delta.shape
    device = delta.device
    triton_path = use_triton(backend, device)
    if N == 0:
        return torch.empty(0, D, dtype=torch.float32, device=device)
    args = (delta, exp_avg, exp_avg_sq, v0, grad_vn, step, lr, float(beta1), float(beta2), float(eps),
            bool(norm_restore))
    if triton_path:
        from .triton import controller_update_triton

        return controller_update_triton(*args)
    return controller_update_reference(*args)


def _check(delta, exp_avg, exp_avg_sq, v0, grad_vn, step, lr, beta1, beta2, eps) -> None:
    named = {"delta": delta, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq, "v0": v0, "grad_vn": grad_vn}
    check_shape("delta", delta, (None, None))
    N, D = delta.shape
    for name, t in named.items():
        check_shape(name, t, (N, D))
        check_dtype(name, t, (torch.float32,))
        check(D <= 1 or t.stride(1) == 1, f"{name} must have unit stride along D, got {t.stride()}")
    check_shape("step", step, (N,))
    check_dtype("step", step, (torch.int32,))
    check_shape("lr", lr, (N,))
    check_dtype("lr", lr, (torch.float32,))
    check(0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0, f"betas must lie in [0, 1), got {beta1}, {beta2}")
    check(eps >= 0.0, f"eps must be >= 0, got {eps}")
    check_same_device(**named, step=step, lr=lr)
