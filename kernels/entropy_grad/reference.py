"""Pure-torch reference (the spec) of the entropy objective and its gradient w.r.t. the logits."""

from __future__ import annotations

import torch


def _p_plogp(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    # 0 * log 0 = 0 for masked tokens instead of NaN
    return p, torch.where(p > 0, p * logp, torch.zeros_like(p))


def entropy_reference(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of softmax(logits) over the last dim, in fp32: [..., V] -> [...].

    Logits of -inf (masked tokens) have p = 0 and contribute 0 (never NaN).
    """
    return -_p_plogp(logits)[1].sum(dim=-1)


def entropy_grad_reference(logits: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy H of softmax(logits) and d/dlogits of alpha * (log V - H), in fp32.

    Logits of -inf (masked tokens) have p = 0 and contribute 0 to H and to the gradient.
    """
    p, plogp = _p_plogp(logits)
    entropy = -plogp.sum(dim=-1)
    grad = alpha.float()[:, None] * (plogp + p * entropy[:, None])
    return entropy, grad
