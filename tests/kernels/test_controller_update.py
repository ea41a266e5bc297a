"""controller_update: reference vs autograd + torch.optim.Adam, Triton vs reference."""

from __future__ import annotations

import pytest
import torch

from vreason.kernels import controller_update
from vreason.kernels.controller_update.reference import controller_update_reference, norm_restore


def make_state(N: int, D: int, seed: int, device):
    """v0 with a zero row, delta with a row where v0 + delta = 0 (the norm clamp is active)."""
    gen = torch.Generator().manual_seed(seed)
    v0 = torch.randn(N, D, generator=gen)
    delta = 0.1 * torch.randn(N, D, generator=gen)
    if N > 2:
        v0[1] = 0.0
        delta[2] = -v0[2]
    exp_avg = 1e-2 * torch.randn(N, D, generator=gen)
    exp_avg_sq = 1e-4 * torch.rand(N, D, generator=gen)
    return [t.to(device) for t in (delta, exp_avg, exp_avg_sq, v0)]


@pytest.mark.parametrize("norm_restore_on", [True, False])
def test_reference_matches_torch_adam(norm_restore_on, assert_close):
    """Three steps from zero state equal autograd through the norm restore + torch.optim.Adam."""
    N, D, lr = 29, 64, 1e-2
    gen = torch.Generator().manual_seed(0)
    delta, _, _, v0 = make_state(N, D, 0, "cpu")
    exp_avg, exp_avg_sq = torch.zeros(N, D), torch.zeros(N, D)
    param = torch.nn.Parameter(delta.clone())
    opt = torch.optim.Adam([param], lr=lr, betas=(0.9, 0.999), eps=1e-8)
    for t in range(1, 4):
        grad_vn = torch.randn(N, D, generator=gen)
        u = v0 + param
        vn = norm_restore(u, v0) if norm_restore_on else u
        opt.zero_grad()
        (vn * grad_vn).sum().backward()
        opt.step()
        step = torch.full((N,), t, dtype=torch.int32)
        out = controller_update_reference(
            delta, exp_avg, exp_avg_sq, v0, grad_vn, step, torch.full((N,), lr),
            norm_restore_on=norm_restore_on,
        )
        state = opt.state[param]
        assert_close(f"delta t={t}", param.detach(), delta, 1e-6)
        assert_close(f"exp_avg t={t}", state["exp_avg"], exp_avg, 1e-6)
        assert_close(f"exp_avg_sq t={t}", state["exp_avg_sq"], exp_avg_sq, 1e-6)
        want = norm_restore(v0 + param.detach(), v0) if norm_restore_on else v0 + param.detach()
        assert_close(f"vn t={t}", want, out, 1e-6)


def test_norm_restore_keeps_norms():
    delta, _, _, v0 = make_state(9, 32, 1, "cpu")
    vn = norm_restore(v0 + delta, v0)
    # row 2 has v0 + delta = 0 and stays 0
    keep = torch.arange(9) != 2
    torch.testing.assert_close(vn.norm(dim=-1)[keep], v0.norm(dim=-1)[keep])
    assert torch.equal(vn[2], torch.zeros(32))


@pytest.mark.parametrize("norm_restore_on", [True, False])
@pytest.mark.parametrize("N,D", [(1, 32), (37, 64), (300, 128), (45, 80)])
def test_triton_matches_reference(N, D, norm_restore_on, device, poison_empty, assert_close):
    gen = torch.Generator().manual_seed(N * D)
    state = make_state(N, D, N + D, device)
    grad_vn = torch.randn(N, D, generator=gen).to(device)
    # rows of different requests sit at different steps and learning rates
    step = torch.randint(1, 50, (N,), generator=gen, dtype=torch.int32).to(device)
    lr = torch.rand(N, generator=gen).mul(1e-2).to(device)
    ref_state = [t.cpu().clone() for t in state]
    ref = controller_update_reference(*ref_state, grad_vn.cpu(), step.cpu(), lr.cpu(),
                                      norm_restore_on=norm_restore_on)
    out = controller_update(*state, grad_vn, step, lr, norm_restore=norm_restore_on, backend="triton")
    assert_close("vn", ref, out, 1e-6)
    for name, r, t in zip(("delta", "exp_avg", "exp_avg_sq"), ref_state, state):
        assert_close(name, r, t, 1e-6)


@pytest.mark.gpu
def test_triton_matches_reference_large(device, poison_empty, assert_close):
    N, D = 32 * 4 * 2048, 128
    gen = torch.Generator().manual_seed(0)
    state = make_state(N, D, 3, device)
    grad_vn = torch.randn(N, D, generator=gen).to(device)
    step = torch.randint(1, 500, (N,), generator=gen, dtype=torch.int32).to(device)
    lr = torch.full((N,), 1e-2, device=device)
    ref_state = [t.cpu().clone() for t in state]
    ref = controller_update_reference(*ref_state, grad_vn.cpu(), step.cpu(), lr.cpu())
    out = controller_update(*state, grad_vn, step, lr)
    assert_close("vn", ref, out, 1e-6)
    assert_close("delta", ref_state[0], state[0], 1e-6)


def test_triton_strided_rows(device, assert_close):
    N, D = 20, 32
    big = [torch.cat([t, t[:, :5]], dim=1) for t in make_state(N, D, 4, device)]
    state = [t[:, :D] for t in big]
    grad_vn = torch.randn(N, D, device=device)
    step, lr = torch.full((N,), 2, dtype=torch.int32, device=device), torch.full((N,), 1e-3, device=device)
    ref_state = [t.cpu().clone() for t in state]
    ref = controller_update_reference(*ref_state, grad_vn.cpu(), step.cpu(), lr.cpu())
    out = controller_update(*state, grad_vn, step, lr, backend="triton")
    assert_close("vn", ref, out, 1e-6)
    assert_close("delta", ref_state[0], big[0][:, :D], 1e-6)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_empty_batch(backend, device):
    state = make_state(0, 16, 0, device)
    step, lr = torch.zeros(0, dtype=torch.int32, device=device), torch.zeros(0, device=device)
    vn = controller_update(*state, state[0], step, lr, backend=backend)
    assert vn.shape == (0, 16)


def test_invalid_inputs_raise():
    delta, m, v, v0 = make_state(6, 8, 0, "cpu")
    g, step, lr = torch.randn(6, 8), torch.ones(6, dtype=torch.int32), torch.ones(6)
    bad = [
        dict(delta=delta[:3]),
        dict(exp_avg=m.double()),
        dict(v0=v0[:, :4]),
        dict(grad_vn=torch.randn(8, 6).t()),
        dict(step=step.long()),
        dict(lr=lr[:2]),
        dict(beta2=1.0),
        dict(eps=-1.0),
    ]
    good = dict(delta=delta, exp_avg=m, exp_avg_sq=v, v0=v0, grad_vn=g, step=step, lr=lr)
    for change in bad:
        with pytest.raises(ValueError):
            controller_update(**{**good, **change})
