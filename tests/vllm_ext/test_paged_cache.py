"""Controlled-position runs (found in a prompt, expanded back to positions for the V0 copy), and the
paged-cache layouts V-Reason reads, checked against what vLLM's own cache-write op wrote."""

from __future__ import annotations

import pytest
import torch

from vreason.server.vllm_ext.paged_cache import UnsupportedLayout, run_positions, split_kv, token_runs

V = 9  # a visual pad token id


def test_runs_and_their_positions_round_trip():
    prompt = [V, V, 1, 2, V, 3, V, V, V]
    runs = token_runs(prompt, {V})
    assert runs == [(0, 2), (4, 1), (6, 3)]
    positions = run_positions(runs)
    assert positions.dtype == torch.long
    assert positions.tolist() == [i for i, t in enumerate(prompt) if t == V]


def test_no_runs():
    assert token_runs([1, 2, 3], {V}) == []
    assert run_positions([]).shape == (0,) and run_positions([]).dtype == torch.long


# -- layouts: written by vLLM's own CPU cache-write op, read back by split_kv -----------------------

def _cpu_write(isa: str, dtype: torch.dtype, block_size: int, head_dim: int, blocks: int = 3, heads: int = 2):
    """A [blocks, heads, block_size, 2*D] cache filled by vLLM's cpu_attn_reshape_and_cache for `isa`
    through a block table that is not the identity; returns (cache, table, keys, values)."""
    pytest.importorskip("vllm")
    from vllm import _custom_ops as ops

    kv = torch.zeros(blocks, heads, block_size, 2 * head_dim, dtype=dtype)
    key_cache, value_cache = kv.view(blocks, heads, 2 * block_size, head_dim).chunk(2, dim=2)
    table = torch.tensor([blocks - 1, 0], dtype=torch.int32)
    t = 2 * block_size
    positions = torch.arange(t)
    slots = table.long()[positions // block_size] * block_size + positions % block_size
    gen = torch.Generator().manual_seed(1)
    keys = torch.randn(t, heads, head_dim, generator=gen).to(dtype)
    values = torch.randn(t, heads, head_dim, generator=gen).to(dtype)
    ops.cpu_attn_reshape_and_cache(keys, values, key_cache, value_cache, slots, isa, k_scale=1.0, v_scale=1.0,
                                   kv_cache_dtype="auto")
    return kv, table, keys, values


@pytest.mark.parametrize("isa", ["vec", "vec16", "amx"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_size,head_dim", [(32, 64), (32, 128), (64, 128), (128, 64)])
def test_cpu_layouts_read_what_vllm_wrote(isa, dtype, block_size, head_dim):
    """vLLM's packing op is plain data movement and runs for every ISA on any x86 CPU (AMX or not),
    so the `amx` reader is checked here on every machine; the AMX attention kernel itself only
    runs on AMX hardware, where the start-up probe (layout_probe.py) checks it."""
    if isa == "amx" and dtype != torch.bfloat16:
        pytest.skip("vLLM packs for amx only in bf16")
    kv, table, keys, values = _cpu_write(isa, dtype, block_size, head_dim)
    paged = split_kv(kv, "CPU_ATTN", isa)
    assert paged.packing == ("amx" if isa == "amx" else "strided")
    positions = torch.arange(keys.shape[0])
    assert torch.equal(paged.tokens("key", table, positions), keys.transpose(0, 1))
    assert torch.equal(paged.tokens("value", table, positions), values.transpose(0, 1))
    # whole blocks, as the attention kernels read them: [*, Hkv, N, D]
    for part, written in (("key", keys), ("value", values)):
        got = paged.blocks(part, table.view(1, 2))  # [1, 2, Hkv, N, D]
        assert torch.equal(got[0].permute(0, 2, 1, 3).reshape(-1, *written.shape[1:]), written)
    k, v, rows = paged.contiguous_rows(table.view(1, 2), torch.tensor([2 * block_size - 3], dtype=torch.int32))
    assert rows.tolist() == [[0, 1]] and k.shape == (2, 2, block_size, head_dim)
    assert torch.equal(k[1, :, 0], keys[block_size]) and torch.equal(v[0, :, 5], values[5])


def test_unknown_isas_and_backends_are_refused_with_the_reason():
    kv = torch.zeros(2, 1, 32, 128)
    for isa in ("neon", "vsx", "vxe", "rvv", None):
        with pytest.raises(UnsupportedLayout, match=f"ISA {isa!r}"):
            split_kv(kv, "CPU_ATTN", isa)
    with pytest.raises(UnsupportedLayout, match="FLASHINFER"):
        split_kv(kv, "FLASHINFER")
    with pytest.raises(UnsupportedLayout, match="multiples of 16"):
        split_kv(torch.zeros(2, 1, 32, 2 * 72, dtype=torch.bfloat16), "CPU_ATTN", "amx")


def test_token_interleaved_layout_is_the_two_halves():
    kv = torch.randn(3, 2, 16, 2 * 8)
    paged = split_kv(kv, "FLASH_ATTN")
    assert paged.strided and torch.equal(paged.key, kv[..., :8]) and torch.equal(paged.value, kv[..., 8:])
    table = torch.tensor([2, 1], dtype=torch.int32)
    assert torch.equal(paged.tokens("value", table, torch.tensor([17])), kv[1, :, 1:2, 8:])
