"""Layer L's overlay never raises out of vLLM's attention op: faults injected into the layout
split, one request's V0 load and the plan's index math are reported in the plan (the runner then
fails the requests they belong to) and the stock attention output stands."""

from __future__ import annotations

import types

import pytest
import torch

from vreason.server.controller import ControllerSlab, ControllerState, VReasonParams
from vreason.server.vllm_ext.overlay import LayerOverlay, OverlayPlan
from vreason.server.vllm_ext.paged_cache import UnsupportedLayout, run_positions

pytest.importorskip("vllm")

HQ, HKV, D, N = 4, 2, 32, 32


def _setup(isa="vec"):
    from vllm import _custom_ops as ops

    kv = torch.zeros(4, HKV, N, 2 * D)
    key_cache, value_cache = kv.view(4, HKV, 2 * N, D).chunk(2, dim=2)
    gen = torch.Generator().manual_seed(0)
    t = 2 * N
    ops.cpu_attn_reshape_and_cache(torch.randn(t, HKV, D, generator=gen), torch.randn(t, HKV, D, generator=gen),
                                   key_cache, value_cache, torch.arange(t), "vec", k_scale=1.0, v_scale=1.0,
                                   kv_cache_dtype="auto")
    slab = ControllerSlab(2, 16, HKV, D, torch.float32, "cpu")
    overlay = LayerOverlay("layer", HQ, HKV, D, D ** -0.5)
    overlay.slab = slab
    states = [ControllerState.create(f"r{i}", VReasonParams(update_every=1), [(3 + i, 10)], slab) for i in range(2)]
    meta = types.SimpleNamespace(block_table=torch.tensor([[0, 1], [0, 1]], dtype=torch.int32),
                                 seq_lens=torch.tensor([40, 50], dtype=torch.int32),
                                 query_start_loc=torch.tensor([0, 1, 2], dtype=torch.int32))
    layer = types.SimpleNamespace(isa=isa, attn_backend=types.SimpleNamespace(get_name=lambda: "CPU_ATTN"))
    return kv, overlay, states, meta, layer


def _apply(overlay, states, meta, layer, kv, loads=None):
    loads = [(s, i, run_positions(s.runs)) for i, s in enumerate(states)] if loads is None else loads
    plan = OverlayPlan.for_rows(list(enumerate(states)), loads, torch.device("cpu"), False)
    query, output = torch.randn(2, HQ * D), torch.full((2, HQ * D), 7.0)
    return overlay.apply(plan, layer, query, kv, meta, output), output


def test_a_layout_that_cannot_be_read_fails_the_step_not_the_engine():
    kv, overlay, states, meta, layer = _setup(isa="neon")
    result, output = _apply(overlay, states, meta, layer, kv)
    assert result is not None and isinstance(result.error, UnsupportedLayout) and "neon" in str(result.error)
    assert torch.equal(output, torch.full_like(output, 7.0))  # the stock output stands
    assert not any(s.loaded for s in states)


def test_a_failed_v0_load_is_that_requests_alone():
    kv, overlay, states, meta, layer = _setup()
    bad = torch.tensor([3, 10_000])  # past the request's block table
    result, output = _apply(overlay, states, meta, layer, kv,
                            loads=[(states[0], 0, bad), (states[1], 1, run_positions(states[1].runs))])
    assert result.error is None and [s for s, _ in result.load_failed] == [states[0]]
    assert isinstance(result.load_failed[0][1], IndexError)
    assert states[1].loaded and not states[0].loaded
    assert result.o is not None and result.o.shape == (2, HQ * D)  # the step's attention still ran


def test_broken_index_math_fails_the_step_not_the_engine():
    kv, overlay, states, meta, layer = _setup()
    meta.query_start_loc = torch.tensor([0], dtype=torch.int32)  # too short for the planned rows
    result, output = _apply(overlay, states, meta, layer, kv)
    assert isinstance(result.error, IndexError)
    assert torch.equal(output, torch.full_like(output, 7.0))
