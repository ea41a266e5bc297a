"""The start-up layout probe on vLLM's real CPU attention backend: it proves the layout this
machine's ISA packs (vec/vec16 everywhere, amx where the CPU has AMX tiles) and refuses a reader
that gets it wrong, by the read-back or by the attention comparison."""

from __future__ import annotations

import types

import pytest
import torch

pytest.importorskip("vllm")

from vreason.server.vllm_ext import paged_cache  # noqa: E402
from vreason.server.vllm_ext.layout_probe import decode_metadata, probe_layout  # noqa: E402

HQ, HKV = 4, 2


def _cpu_backend(demo_model, dtype: str, block_size: int, head_dim: int):
    """(layer, impl, builder) of vLLM's CPU attention backend for one layer, as its runner makes them."""
    from vllm.config import CacheConfig, ModelConfig, VllmConfig, set_current_vllm_config
    from vllm.v1.attention.backends.cpu_attn import (CPUAttentionBackend, CPUAttentionBackendImpl,
                                                     CPUAttentionMetadataBuilder)
    from vllm.v1.kv_cache_interface import FullAttentionSpec

    model = ModelConfig(model=str(demo_model), dtype=dtype)
    config = VllmConfig(model_config=model, cache_config=CacheConfig(block_size=block_size))
    spec = FullAttentionSpec(block_size=block_size, num_kv_heads=HKV, head_size=head_dim, dtype=model.dtype)
    builder = CPUAttentionMetadataBuilder(spec, [], config, torch.device("cpu"))
    with set_current_vllm_config(config):
        impl = CPUAttentionBackendImpl(HQ, head_dim, head_dim ** -0.5, HKV, None, None, "auto", None, "decoder")
    layer = types.SimpleNamespace(isa=builder.isa, _k_scale_float=1.0, _v_scale_float=1.0,
                                  attn_backend=CPUAttentionBackend)
    return layer, impl, builder, model.dtype


def _probe(demo_model, dtype="float32", block_size=32, head_dim=64, split=paged_cache.split_kv):
    layer, impl, builder, torch_dtype = _cpu_backend(demo_model, dtype, block_size, head_dim)
    return probe_layout(layer, impl, decode_metadata(builder), (8, HKV, block_size, 2 * head_dim), torch_dtype,
                        torch.device("cpu"), HQ, head_dim ** -0.5, split=split)


@pytest.mark.parametrize("dtype,block_size,head_dim", [
    ("float32", 32, 64), ("float32", 64, 128), ("bfloat16", 32, 64), ("bfloat16", 32, 128), ("float32", 32, 80),
])
def test_probe_proves_this_machines_layout(demo_model, dtype, block_size, head_dim):
    report = _probe(demo_model, dtype, block_size, head_dim)
    amx = torch.cpu._is_amx_tile_supported() and dtype == "bfloat16"
    assert report.isa == ("vec16" if head_dim % 32 else "amx" if amx else "vec")
    assert report.reason is None, report.reason
    assert report.packing == ("amx" if amx else "strided")
    assert report.max_error <= report.tolerance


def test_a_reader_that_misreads_is_refused_at_read_back(demo_model):
    def untransposed_keys(kv, backend, isa):  # the first, wrong, reading of the CPU layout
        right = paged_cache.split_kv(kv, backend, isa)
        b, h, n, d = right.key.shape
        key = kv.as_strided((b, h, n, d), (kv.stride(0), kv.stride(1), d, 1), kv.storage_offset())
        return paged_cache.PagedKV(key, right.value, n, d, "strided")

    report = _probe(demo_model, split=untransposed_keys)
    assert report.reason is not None and "keys read back" in report.reason and "differ" in report.reason


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_reader_whose_blocks_are_wrong_is_refused_by_the_attention_check(demo_model, monkeypatch, dtype):
    """Read-back right, whole blocks wrong (heads swapped), as a bug in an unpacking reader would be.
    Every layout is sent down the unpacking path (a strided one read by plain indexing), whose
    blocks come back with their heads swapped; the packed `amx` layout (bf16 on AMX CPUs) keeps its
    own token and block readers under the swap."""
    tokens, blocks = paged_cache.PagedKV.tokens, paged_cache.PagedKV.blocks

    def strided_tokens(self, part, row, pos):
        return getattr(self, part)[row.long()[pos // self.block_size], :, pos % self.block_size].transpose(0, 1)

    monkeypatch.setattr(paged_cache.PagedKV, "strided", property(lambda self: False))
    monkeypatch.setattr(paged_cache.PagedKV, "tokens", lambda self, part, row, pos: (
        strided_tokens if self.packing == "strided" else tokens)(self, part, row, pos))
    monkeypatch.setattr(paged_cache.PagedKV, "blocks", lambda self, part, ids: (
        getattr(self, part)[ids.long()] if self.packing == "strided" else blocks(self, part, ids)).flip(-3))
    report = _probe(demo_model, dtype)
    assert report.reason is not None and "attention" in report.reason, report
    assert report.max_error > 4 * report.tolerance  # a misread is far outside the bound


def test_an_exception_is_a_reason_not_a_crash(demo_model):
    def broken(kv, backend, isa):
        raise RuntimeError("boom")

    report = _probe(demo_model, split=broken)
    assert "layout probe" in report.reason and "boom" in report.reason
