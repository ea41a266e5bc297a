"""The controller's math against closed forms, torch.optim.Adam and plain autograd (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers.numerics import sum_roundoff

from vreason.kernels.entropy_grad.reference import entropy_grad_reference
from vreason.server.controller import (ControllerSlab, ControllerState, ParamError, SwitchState, TailWeights,
                                       UpdateInputs, VReasonParams, controlled_values, controller_step, entropy,
                                       group_grad, state_bytes, tail_acts, tail_input_grad, tail_logits,
                                       tail_reference, wants_transposed, with_transposed)
from vreason.server.controller.knobs import TEST_HOOKS, KnobbedParams

HKV, HQ, D, HID, INTER, VOCAB = 2, 4, 8, 16, 24, 50


def make_weights(seed=0, dtype=torch.float32, hid=HID, inter=INTER, vocab=VOCAB, hq=HQ, d=D):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, std=0.3: (torch.randn(*s, generator=g) * std).to(dtype)  # noqa: E731
    return TailWeights(o_proj=r(hid, hq * d), post_norm=1 + r(hid, std=0.1), gate_up=r(2 * inter, hid),
                       down=r(hid, inter), final_norm=1 + r(hid, std=0.1), lm_head=r(vocab, hid, std=1.0),
                       eps=1e-6)


def test_entropy_closed_forms():
    assert torch.allclose(entropy(torch.zeros(1, 7)), torch.tensor([math.log(7)]))
    peaked = torch.tensor([[100.0, 0, 0]])
    assert entropy(peaked).item() < 1e-6


def test_entropy_of_masked_logits_is_finite_and_the_kernel_reference():
    # -inf logits (masked tokens, e.g. a grammar or allowed_token_ids) have p = 0 and add 0
    logits = torch.tensor([[1.0, -math.inf, 0.5, -math.inf], [0.0, 0.0, 0.0, -math.inf]])
    h = entropy(logits)
    assert torch.isfinite(h).all()
    assert torch.equal(h, entropy_grad_reference(logits, torch.ones(2))[0])
    assert h[1].item() == pytest.approx(math.log(3), abs=1e-6)  # uniform over the 3 unmasked tokens
    p = torch.softmax(torch.tensor([1.0, 0.5], dtype=torch.float64), -1)
    assert h[0].item() == pytest.approx(-(p * p.log()).sum().item(), abs=1e-6)


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


def _ground_truth(o, res, w, grad_z):
    """Logits and dL/do by autograd of the float64 reference."""
    o64 = o.double().requires_grad_(True)
    z = tail_reference(o64, res.double(), w, torch.float64)
    (g,) = torch.autograd.grad(z, o64, grad_outputs=grad_z.double())
    return z.detach(), g


@pytest.mark.parametrize("transposed", [False, True], ids=["shared", "transposed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lean_tail_forward_and_input_grad_match_float64_autograd(dtype, transposed):
    """The hand-written backward is the exact input gradient; bf16 weights are read as stored,
    or through their transposed copies (the same values in the other orientation).

    fp32 weights: only fp32 rounding separates the lean path from float64 (bound 1e-4 relative
    for these sizes). bf16 weights: the ground truth uses the same bf16 weights in float64; the
    lean path rounds each GEMM input activation to bf16 (relative 2^-8 per element), so a
    relative error of a few 2^-8 is the derived bound.
    """
    w = make_weights(1, dtype, hid=64, inter=96, vocab=200)
    if transposed:
        w = with_transposed(w)
    g = torch.Generator().manual_seed(2)
    o, res = torch.randn(3, HQ * D, generator=g), torch.randn(3, 64, generator=g)
    grad_z = torch.randn(3, 200, generator=g)
    z_ref, go_ref = _ground_truth(o, res, w, grad_z)
    z = tail_logits(o, res, w)
    go = tail_input_grad(tail_acts(o, res, w), grad_z, w)
    assert z.dtype == torch.float32 and go.dtype == torch.float32
    rel = lambda x, y: ((x.double() - y).norm() / y.norm()).item()  # noqa: E731
    bound = 1e-4 if dtype == torch.float32 else 4 * 2.0**-8
    assert rel(z, z_ref) < bound
    assert rel(go, go_ref) < bound


def test_transposed_copies_rule_and_values():
    """Copies only where they pay (CPU, reduced precision); each copy is W.T exactly."""
    assert wants_transposed(make_weights(0, torch.bfloat16)) and wants_transposed(make_weights(0, torch.float16))
    assert not wants_transposed(make_weights(0, torch.float32))
    w = with_transposed(make_weights(0, torch.bfloat16))
    for name in ("o_proj", "gate_up", "down", "lm_head"):
        t = getattr(w.transposed, name)
        assert t.is_contiguous() and torch.equal(t, getattr(w, name).t())
    assert w.transposed.nbytes() == sum(getattr(w, n).numel() * 2 for n in ("o_proj", "gate_up", "down", "lm_head"))


def test_group_grad_equals_expanded_values_autograd():
    g = torch.Generator().manual_seed(3)
    a = torch.rand(2, HQ, 5, generator=g)
    grad_o = torch.randn(2, HQ * D, generator=g)
    vn = torch.randn(2, HKV, 5, D, dtype=torch.float64, requires_grad=True)
    o = torch.einsum("ugp,ugpd->ugd", a.double(), vn.repeat_interleave(HQ // HKV, 1)).flatten(1)
    (ref,) = torch.autograd.grad(o, vn, grad_outputs=grad_o.double())
    got = group_grad(a, grad_o, HKV)  # [U, P, Hkv, D]
    assert torch.allclose(got.double(), ref.permute(0, 2, 1, 3), atol=1e-5)


def _slab(slots=4, p_max=12):
    return ControllerSlab(slots, p_max, HKV, D, torch.float32, "cpu")


def _row(slab, seed, p, params):
    g = torch.Generator().manual_seed(seed)
    v0 = torch.randn(HKV, p, D, generator=g)
    a = torch.softmax(torch.randn(HQ, p + 3, generator=g), -1)[:, :p]
    c = torch.randn(HQ, D, generator=g) * 0.1
    res = torch.randn(HID, generator=g)
    s = ControllerState.create(f"r{seed}", params, [(0, p)], slab)
    s.load(v0)
    return s, c, a, res


def _attention(c, a, vn):
    return (c + torch.einsum("gp,gpd->gd", a, vn.float().repeat_interleave(HQ // HKV, 0))).reshape(-1)


def _eager(params, v0, c, a, res, w, t_max):
    """The obvious single-request loop with autograd, torch.optim.Adam and the reference tail."""
    delta = torch.zeros_like(v0, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=params.lr)
    sw, hs = SwitchState(params.beta), []

    def logits():
        vn = controlled_values(v0, delta, params.norm_restore)
        return tail_reference(_attention(c, a, vn)[None], res[None], w)[0]

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


def _run_step(rows, w, hooks=None):
    """What the runner does: controlled logits from the overlay forward, update inputs for updating rows."""
    logits, upd = [], []
    o_now = []
    for i, (s, c, a, res) in enumerate(rows):
        o = _attention(c, a, s.vn)
        o_now.append(o)
        logits.append(tail_reference(o[None], res[None], w)[0])
        if s.updates_at_next_step():
            upd.append(i)
    logits = torch.stack(logits)
    inputs = None
    if upd:
        p_max = max(rows[i][0].num_positions for i in upd)
        a = torch.stack([torch.nn.functional.pad(rows[i][2], (0, p_max - rows[i][2].shape[1])) for i in upd])
        inputs = UpdateInputs(upd, torch.stack([o_now[i] for i in upd]), a, torch.stack([rows[i][3] for i in upd]))
    report = controller_step([r[0] for r in rows], logits, inputs, w, hooks=hooks)
    report.finish()
    for i, row in report.step_rows.items():
        rows[i][0].__dict__.setdefault("history", []).append(row)  # this test's record of the rows
    return logits, report


@pytest.mark.parametrize("knobs", [dict(update_every=1, steps=1), dict(update_every=3, steps=2),
                                   dict(update_every=2, steps=1, norm_restore="none", apply="next")])
def test_batched_step_matches_eager_loop(knobs):
    """Two requests of different lengths batched together follow the single-request loop exactly.

    The query/keys (hence a and c) are held fixed over steps here: the test isolates the inner loop.
    """
    w = make_weights()
    params = VReasonParams(lr=0.2, beta=0.7, **knobs)
    slab = _slab()
    rows = [_row(slab, 1, 5, params), _row(slab, 2, 9, params)]
    refs = [_eager(params, s.v0.clone(), c, a, res, w, 7) for s, c, a, res in rows]
    for _ in range(1, 8):
        _run_step(rows, w)
    for (s, *_), (hs, delta) in zip(rows, refs):
        assert [r.entropy for r in s.history] == pytest.approx(hs, abs=1e-4)
        assert torch.allclose(s.delta, delta, atol=1e-5)
        assert torch.allclose(s.vn, controlled_values(s.v0, s.delta, params.norm_restore), atol=1e-6)
        assert s.updates == 7 // params.update_every
    assert slab.delta[:, 9:].abs().max() == 0  # nothing written past a slot's positions


def test_apply_now_logits_are_the_updated_forward():
    w = make_weights()
    slab = _slab()
    s, c, a, res = _row(slab, 5, 6, VReasonParams(update_every=1, lr=0.3))
    logits, report = _run_step([(s, c, a, res)], w)
    expect = tail_reference(_attention(c, a, s.vn)[None], res[None], w)
    assert s.last_row.updated is True
    assert torch.allclose(logits, expect, atol=1e-5)
    assert s.last_row.entropy_after == pytest.approx(entropy(expect).item(), abs=1e-5)


def test_nan_skips_update_and_is_counted():
    w = make_weights()
    slab = _slab()
    s, c, a, res = _row(slab, 3, 4, KnobbedParams(update_every=1, nan_at_step=1))
    before = s.vn.clone()
    _run_step([(s, c, a, res)], w, TEST_HOOKS)
    assert s.skipped_updates == 1 and s.updates == 0 and torch.count_nonzero(s.delta) == 0
    assert s.last_row.skipped is True and torch.equal(s.vn, before) and s.adam_step == 0


def test_slab_slots_are_reused_and_state_bytes_formula():
    slab = _slab(slots=2, p_max=6)
    first = id(slab.delta)
    s, *_ = _row(slab, 4, 6, VReasonParams())
    assert s.nbytes() == state_bytes(HKV, 6, D) == (4 * 4 + 4) * HKV * 6 * D
    t, *_ = _row(slab, 5, 3, VReasonParams())
    assert ControllerState.create("x", VReasonParams(), [(0, 1)], slab) is None  # full
    s.release()
    u = ControllerState.create("y", VReasonParams(), [(0, 7)], slab)
    assert u is None  # more positions than a slot holds
    u = ControllerState.create("y", VReasonParams(), [(0, 2)], slab)
    assert u.slot == s.slot and id(slab.delta) == first


def test_one_failing_row_fails_alone_and_the_others_match_a_solo_run():
    """Containment: an exception in one request's update (the fail_at_step knob raises inside the
    batched gradient) fails that row only; the batch is retried row by row, and the other rows end
    exactly as when they run without it."""
    w = make_weights()
    good, bad = VReasonParams(lr=0.2, update_every=2), KnobbedParams(lr=0.2, update_every=2, fail_at_step=2)
    slab = _slab()
    batch = [_row(slab, 1, 5, good), _row(slab, 2, 6, bad), _row(slab, 3, 7, good)]
    solo_slab = _slab()
    solo = [_row(solo_slab, 1, 5, good), _row(solo_slab, 3, 7, good)]
    failed_at = None
    for step in range(1, 5):
        live = [r for r in batch if r[0].slot >= 0]
        _, report = _run_step(live, w, TEST_HOOKS)
        _run_step(solo, w)
        for i, e in report.failed.items():
            assert "fail_at_step" in str(e) and live[i][0] is batch[1][0]
            failed_at = step
            live[i][0].slot = -1  # the runner releases a failed request
    assert failed_at == 2
    # Both runs do the same maths and differ only in fp32 summation order (a batched GEMM vs one
    # row after the retry). Per step about 6 chained reductions (o_proj, gate_up, down, lm_head,
    # softmax, entropy) of at most VOCAB terms, each within sum_roundoff(VOCAB) of the sum of its
    # |terms| (tests/helpers/numerics.py), over 4 steps: 24 such errors, on entropies <= log VOCAB
    # and on deltas moved by at most lr per Adam step (2 updates).
    rel = 24 * sum_roundoff(VOCAB)
    tol_h, tol_d = rel * math.log(VOCAB), rel * 2 * good.lr
    for (s, *_), (ref, *_) in zip([batch[0], batch[2]], solo):
        assert [r.entropy for r in s.history] == pytest.approx([r.entropy for r in ref.history], abs=tol_h)
        assert (s.delta - ref.delta).abs().max() <= tol_d and s.updates == ref.updates == 2
    assert len(batch[1][0].history) == 1  # step 1 only: no row for the failed step


def test_fail_at_step_must_be_an_update_step():
    with pytest.raises(ParamError, match="fail_at_step"):
        KnobbedParams(update_every=2, fail_at_step=3)


def test_test_knobs_are_unknown_options_unless_enabled():
    with pytest.raises(ParamError, match="unknown vreason option"):
        VReasonParams.from_dict({"force_alpha": 1})
    assert KnobbedParams.from_dict({"force_alpha": 1}).force_alpha == 1


def _mixed_batch(slab):
    """Four requests updating at every step: different lengths, learning rates and norm restores."""
    return [_row(slab, 11, 5, VReasonParams(lr=0.2, update_every=1)),
            _row(slab, 12, 9, VReasonParams(lr=0.05, update_every=1, norm_restore="none")),
            _row(slab, 13, 3, VReasonParams(lr=0.1, update_every=1, steps=2)),
            _row(slab, 14, 7, VReasonParams(lr=0.3, update_every=1, norm_restore="none"))]


@pytest.mark.parametrize("limit", [HKV * D * 6, 1 << 30], ids=["some-in-place", "all-gathered"])
def test_gathered_adam_equals_one_row_at_a_time(monkeypatch, limit):
    """Rows at or under GATHER_MAX_VALUES update together (gathered from their slots, one fused
    call per norm restore, written back); the others in place. Either way each slot ends where
    updating it alone (limit 0) puts it: the fused update is elementwise, and the attention
    output's shift is one batched GEMM instead of one per row, which changes only the fp32
    summation order of P <= 9 terms per output (then through the tail as in the containment test)."""
    from vreason.server.controller import step as step_module

    w = make_weights()
    runs = {}
    for name, lim in (("alone", 0), ("batched", limit)):
        monkeypatch.setattr(step_module, "GATHER_MAX_VALUES", lim)
        slab = _slab(slots=6)
        rows = _mixed_batch(slab)
        for _ in range(4):
            _run_step(rows, w)
        runs[name] = rows
    rel = 24 * sum_roundoff(VOCAB)
    for (s, *_), (ref, *_) in zip(runs["batched"], runs["alone"]):
        assert s.adam_step == ref.adam_step == 4 * s.params.steps and s.updates == 4
        for field in ("entropy", "entropy_after"):  # after: the apply-now forward on the shifted output
            assert [getattr(r, field) for r in s.history] == pytest.approx(
                [getattr(r, field) for r in ref.history], abs=rel * math.log(VOCAB))
        assert (s.delta - ref.delta).abs().max() <= rel * 8 * s.params.lr
        assert torch.equal(s.vn, controlled_values(s.v0, s.delta, s.params.norm_restore).to(s.vn.dtype))
    assert runs["batched"][0][0].slab.delta[:, 9:].abs().max() == 0  # nothing written past a slot's positions


def test_gathered_adam_that_raises_writes_nothing_and_rows_go_one_at_a_time(monkeypatch):
    """A failure inside the gathered update (here: the fused call refuses rows that are not a
    view of a slot, i.e. a gathered batch) leaves every slot untouched; the rows then update one
    at a time, exactly as when the batch is never tried."""
    from vreason.server.controller import step as step_module

    real = step_module.controller_update
    refused = []

    def one_request_only(delta, *args, **kwargs):
        if delta._base is None:
            refused.append(delta.shape[0])
            raise RuntimeError("a gathered batch")
        return real(delta, *args, **kwargs)

    w = make_weights()
    slab, alone_slab = _slab(slots=6), _slab(slots=6)
    rows, alone = _mixed_batch(slab), _mixed_batch(alone_slab)
    for _ in range(3):
        monkeypatch.setattr(step_module, "controller_update", one_request_only)
        _run_step(rows, w)
        monkeypatch.setattr(step_module, "GATHER_MAX_VALUES", 0)
        monkeypatch.setattr(step_module, "controller_update", real)
        _run_step(alone, w)
        monkeypatch.undo()
    assert refused == [(5 + 3) * HKV, (9 + 7) * HKV] * 3  # both norm-restore groups tried at each step
    for (s, *_), (ref, *_) in zip(rows, alone):
        assert torch.equal(s.delta, ref.delta) and s.adam_step == ref.adam_step and s.updates == 3
        assert [(r.entropy, r.entropy_after) for r in s.history] == [(r.entropy, r.entropy_after) for r in ref.history]
