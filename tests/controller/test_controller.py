"""The controller's math against closed forms, torch.optim.Adam and plain autograd."""

from __future__ import annotations

import math

import pytest
import torch

from vreason.server.controller import (ControllerState, ParamError, RowInputs, SwitchState, TailWeights,
                                       VReasonParams, controlled_values, controller_step, entropy,
                                       state_bytes, tail_logits)

HKV, HQ, D, HID, INTER, VOCAB = 2, 4, 8, 16, 24, 50


def make_weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, std=0.3: torch.randn(*s, generator=g) * std  # noqa: E731
    return TailWeights(o_proj=r(HID, HQ * D), post_norm=1 + r(HID, std=0.1), gate_up=r(2 * INTER, HID),
                       down=r(HID, INTER), final_norm=1 + r(HID, std=0.1), lm_head=r(VOCAB, HID, std=1.0),
                       eps=1e-6)


def test_entropy_closed_forms():
    assert torch.allclose(entropy(torch.zeros(1, 7)), torch.tensor([math.log(7)]))
    peaked = torch.tensor([[100.0, 0, 0]])
    assert entropy(peaked).item() < 1e-6


def test_norm_restore_keeps_norms_and_none_is_sum():
    v0, dv = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    vn = controlled_values(v0, dv, "token")
    assert torch.allclose(vn.norm(dim=-1), v0.norm(dim=-1), atol=1e-5)
    assert torch.allclose(controlled_values(v0, dv, "none"), v0 + dv)
    assert torch.allclose(controlled_values(v0, torch.zeros_like(v0), "token"), v0, atol=1e-6)


def test_switch_rule():
    s = SwitchState(beta=0.5)
    alphas = [s.advance(h) for h in (2.0, 4.0, 1.0, 0.5, 6.0)]
    # E: 1, 2.5, 1.75, 1.125, 3.5625 ; M before: 0, 1, 2.5, 2.5, 2.5
    assert alphas == [1.0, 1.0, -1.0, -1.0, 1.0]
    assert s.peak_step == 5 and s.peak == pytest.approx(3.5625)


def test_params_validation():
    with pytest.raises(ParamError) as e:
        VReasonParams.from_dict({"lr": 0})
    assert e.value.param == "vreason.lr"
    with pytest.raises(ParamError):
        VReasonParams.from_dict({"steps": 1.5})
    with pytest.raises(ParamError):
        VReasonParams.from_dict({"apply": "later"})
    with pytest.raises(ParamError) as e:
        VReasonParams.from_dict({"nope": 1})
    assert e.value.param == "vreason.nope"
    assert VReasonParams.from_dict(VReasonParams(lr=0.3).to_dict()).lr == 0.3


def _row(seed, p, params):
    g = torch.Generator().manual_seed(seed)
    v0 = torch.randn(HKV, p, D, generator=g)
    a = torch.softmax(torch.randn(HQ, p + 3, generator=g), -1)[:, :p]
    c = torch.randn(HQ, D, generator=g) * 0.1
    o = c + torch.einsum("gp,gpd->gd", a, v0.repeat_interleave(HQ // HKV, 0))
    res = torch.randn(HID, generator=g)
    return ControllerState.create(f"r{seed}", params, [(0, p)], v0), o, a, res


def _eager(params, v0, o, a, res, w, t_max):
    """The obvious single-request loop with autograd and torch.optim.Adam."""
    c = o - torch.einsum("gp,gpd->gd", a, v0.repeat_interleave(HQ // HKV, 0))
    delta = torch.zeros_like(v0, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=params.lr)
    sw, hs = SwitchState(params.beta), []

    def logits():
        vn = controlled_values(v0, delta, params.norm_restore).repeat_interleave(HQ // HKV, 0)
        return tail_logits((c + torch.einsum("gp,gpd->gd", a, vn)).reshape(1, -1), res[None], w)[0]

    for t in range(1, t_max + 1):
        with torch.no_grad():
            z = logits()
        h = entropy(z[None]).item()
        alpha = sw.advance(h)
        hs.append(h)
        if t % params.update_every == 0:
            for _ in range(params.steps):
                opt.zero_grad()
                (alpha * (math.log(VOCAB) - entropy(logits()[None]).sum())).backward()
                opt.step()
    return hs, delta.detach()


@pytest.mark.parametrize("knobs", [dict(update_every=1, steps=1), dict(update_every=3, steps=2),
                                   dict(update_every=2, steps=1, norm_restore="none", apply="next")])
def test_batched_step_matches_eager_loop(knobs):
    """Two requests of different lengths batched together follow the single-request loop exactly.

    The query/keys (hence a and c) are held fixed over steps here: the test isolates the inner loop.
    """
    w = make_weights()
    params = VReasonParams(lr=0.2, beta=0.7, **knobs)
    rows = [_row(1, 5, params), _row(2, 9, params)]
    refs = [_eager(params, s.v0, o, a, res, w, 7) for s, o, a, res in rows]
    for t in range(1, 8):
        inputs = []
        for s, o, a, res in rows:
            vn = controlled_values(s.v0, s.delta, params.norm_restore).repeat_interleave(HQ // HKV, 0)
            c = o - torch.einsum("gp,gpd->gd", a, s.v0.repeat_interleave(HQ // HKV, 0))
            o_now = c + torch.einsum("gp,gpd->gd", a, vn)
            stock = tail_logits(o.reshape(1, -1), res[None], w)[0]
            inputs.append(RowInputs(state=s, logits=stock, residual=res, o=o_now, a=a))
        controller_step(inputs, w)
    for (s, *_), (hs, delta) in zip(rows, refs):
        assert [r["entropy"] for r in s.trace] == pytest.approx(hs, abs=1e-4)
        assert torch.allclose(s.delta, delta, atol=1e-5)
        assert s.updates == 7 // params.update_every
        assert not s.delta.requires_grad and s.delta.grad_fn is None  # no graph survives a step


def test_nan_skips_update_and_is_counted():
    w = make_weights()
    s, o, a, res = _row(3, 4, VReasonParams(update_every=1, nan_at_step=1))
    controller_step([RowInputs(state=s, logits=torch.randn(VOCAB), residual=res, o=o, a=a)], w)
    assert s.skipped_updates == 1 and s.updates == 0 and torch.count_nonzero(s.delta) == 0
    assert s.trace[-1]["skipped"] is True


def test_state_bytes_formula():
    s, *_ = _row(4, 6, VReasonParams())
    assert s.nbytes() == state_bytes(HKV, 6, D) == 4 * HKV * 6 * D * 4
