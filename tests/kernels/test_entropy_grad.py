"""entropy_grad: reference vs autograd, Triton vs reference over odd vocabularies and dtypes."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers.numerics import assert_within, entropy_grad_truth
from vreason.kernels import entropy_grad
from vreason.kernels.entropy_grad.reference import entropy_grad_reference

# The math is fp32 for every input dtype. The kernel and the fp32 reference are each checked
# against a float64 ground truth computed from the same (rounded) inputs, within bounds derived
# from the vocabulary length (tests/helpers/numerics.py): two fp32 results of a 150k-term sum
# differ by ~1e-5 depending on the CPU's summation order, so comparing them with each other
# under a fixed tolerance fails on some machines.
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def check_against_truth(logits, alpha, entropy, grad) -> None:
    true_h, true_g, tol_h, tol_g = entropy_grad_truth(logits.cpu(), alpha.cpu())
    assert_within("entropy", true_h, entropy, tol_h, dims=0)
    assert_within("grad", true_g, grad, tol_g)


def make_inputs(R: int, V: int, dtype: torch.dtype, seed: int, device, masked: bool = True):
    gen = torch.Generator().manual_seed(seed)
    # spread like real logits: a few large entries over a broad base
    logits = torch.randn(R, V, generator=gen) * 3
    logits[:, :5] += 12
    if masked and R > 1:
        logits[1, torch.randperm(V, generator=gen)[: V // 3]] = float("-inf")
    alpha = torch.where(torch.rand(R, generator=gen) < 0.5, -1.0, 1.0)
    return logits.to(dtype).to(device), alpha.to(device)


@pytest.mark.parametrize("V", [7, 1000, 2053, 4099])
def test_reference_matches_autograd(V):
    logits, alpha = make_inputs(3, V, torch.float64, seed=V, device="cpu", masked=False)
    x = logits.clone().requires_grad_()
    dist = torch.distributions.Categorical(logits=x)
    loss = (alpha * (math.log(V) - dist.entropy())).sum()
    loss.backward()
    entropy, grad = entropy_grad_reference(logits.float(), alpha.float())
    torch.testing.assert_close(entropy.double(), dist.entropy().detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), x.grad, rtol=1e-4, atol=1e-6)


def test_reference_masked_tokens():
    logits = torch.tensor([[0.0, float("-inf"), 0.0, float("-inf")]])
    entropy, grad = entropy_grad_reference(logits, torch.ones(1))
    torch.testing.assert_close(entropy, torch.tensor([math.log(2)]))
    assert torch.equal(grad, torch.zeros(1, 4))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("R,V", [(1, 7), (3, 1000), (2, 2053), (5, 4099), (2, 151936)])
def test_triton_matches_reference(R, V, dtype, device, poison_empty):
    logits, alpha = make_inputs(R, V, dtype, seed=R * V, device=device)
    entropy, grad = entropy_grad(logits, alpha, backend="triton")
    assert entropy.dtype == grad.dtype == torch.float32
    check_against_truth(logits, alpha, entropy, grad)
    check_against_truth(logits, alpha, *entropy_grad_reference(logits.cpu(), alpha.cpu()))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("R,V", [(32, 152064), (8, 151936), (64, 32000)])
def test_triton_matches_reference_large(R, V, dtype, device, poison_empty):
    logits, alpha = make_inputs(R, V, dtype, seed=V, device=device)
    entropy, grad = entropy_grad(logits, alpha)
    check_against_truth(logits, alpha, entropy, grad)
    check_against_truth(logits, alpha, *entropy_grad_reference(logits.cpu(), alpha.cpu()))


def test_triton_strided_logits(device):
    logits, alpha = make_inputs(3, 1500, torch.float32, seed=2, device=device)
    view = torch.cat([logits, logits[:, :37]], dim=1)[:, :1500]
    assert not view.is_contiguous()
    entropy, grad = entropy_grad(view, alpha, backend="triton")
    check_against_truth(logits, alpha, entropy, grad)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_empty_batch(backend, device):
    entropy, grad = entropy_grad(torch.zeros(0, 11, device=device), torch.zeros(0, device=device), backend)
    assert entropy.shape == (0,) and grad.shape == (0, 11)


def test_invalid_inputs_raise():
    logits, alpha = make_inputs(2, 10, torch.float32, seed=0, device="cpu")
    for bad in [
        (logits[0], alpha),
        (logits.long(), alpha),
        (logits[:, :0], alpha),
        (logits, alpha[:1]),
        (logits, alpha.double()),
    ]:
        with pytest.raises(ValueError):
            entropy_grad(*bad)
    with pytest.raises(ValueError, match="backend"):
        entropy_grad(logits, alpha, backend="gpu")
