"""Entropy of the next-token distribution and the gradient of the V-Reason loss w.r.t. logits."""

from __future__ import annotations

import torch

from .._utils import CheckedOnce, check, check_dtype, check_same_device, check_shape, signature, use_triton
from .reference import entropy_grad_reference

__all__ = ["entropy_grad"]

_CHECKED = CheckedOnce()


def entropy_grad(
    logits: torch.Tensor, alpha: torch.Tensor, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy H of p = softmax(logits) and the gradient of L = alpha * (log V - H).

    L = alpha * KL(p || uniform): alpha = +1 raises the entropy when minimised, -1 lowers it.
    All math is fp32 at temperature 1; logits of -inf are allowed (p = 0, gradient 0).

    Args:
        logits: [R, V] fp32, bf16 or fp16 (any V, any strides).
        alpha: [R] fp32.
        backend: "auto" (Triton on CUDA, torch otherwise), "torch", or "triton" (CUDA, or CPU
            under TRITON_INTERPRET=1).

    Returns:
        entropy: [R] fp32.
        grad: [R, V] fp32, dL/dlogits = alpha * p * (log p + H).
    """
    key = signature(logits, alpha)
    if key not in _CHECKED:
        _check(logits, alpha)
        _CHECKED.add(key)
    R, V = logits.shape
    device = logits.device
    triton_path = use_triton(backend, device)
    if R == 0:
        return (
            torch.empty(0, dtype=torch.float32, device=device),
            torch.empty(0, V, dtype=torch.float32, device=device),
        )
    if triton_path:
        from .triton import entropy_grad_triton

        return entropy_grad_triton(logits, alpha)
    return entropy_grad_reference(logits, alpha)


def _check(logits: torch.Tensor, alpha: torch.Tensor) -> None:
    check_dtype("logits", logits, (torch.float32, torch.bfloat16, torch.float16))
    check_shape("logits", logits, (None, None))
    R, V = logits.shape
    check(V > 0, "logits must have a non-empty vocabulary dimension")
    check_shape("alpha", alpha, (R,))
    check_dtype("alpha", alpha, (torch.float32,))
    check_same_device(logits=logits, alpha=alpha)
