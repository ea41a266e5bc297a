"""Proving, at start-up and on the real hardware, that V-Reason reads layer L's paged cache right.

Before serving, the worker writes known keys and values through the attention backend's own
cache-write path (`impl.do_kv_cache_update`, the op vLLM itself uses) into scratch blocks shaped
like layer L's cache, reads them back through `paged_cache.split_kv`, and runs the overlay's
attention (Vn = V0) against the backend's own attention output on those blocks. Any mismatch, an
unknown packing or an exception is a reason: V-Reason is disabled with it, plain serving is
unchanged, and `--vreason on` refuses to start. The first controlled request can then never
be the one that finds out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vreason.kernels.controlled_attention import controlled_attention

from .paged_cache import PagedKV, split_kv

QUERY_GAIN = 2.0  # sharper than random attention, so a misread block or head moves the output by O(1)


@dataclass(frozen=True)
class LayoutReport:
    """What the probe saw: the layout it proved, or the reason it could not."""

    backend: str
    isa: str | None
    packing: str | None  # "strided", "amx"; None when refused
    max_error: float | None  # overlay attention vs the backend's, where it got that far
    tolerance: float | None
    reason: str | None  # None: proven

    def as_dict(self) -> dict:
        return {"backend": self.backend, "isa": self.isa, "packing": self.packing,
                "max_error": self.max_error, "tolerance": self.tolerance, "proven": self.reason is None}


def attention_tolerance(dtype: torch.dtype, value_scale: float) -> float:
    """How far the overlay's attention (fp32 math) may sit from the backend's on the probe. Both
    outputs are rounded to the cache dtype (they may land one ulp apart: 2 units of roundoff of
    |o| <= max|v|), and the backend may round the softmax probabilities to it before p @ V (one
    more unit times max|v|); 8 units leave a margin, far below what a misread block or head moves
    the output by (order max|v|, tests/vllm_ext/test_layout_probe.py)."""
    unit = {torch.float32: 2.0 ** -20, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}[dtype]
    return 8 * unit * value_scale


def _amx_granted() -> bool:
    """Ask Linux for the AMX tile state of this process (idempotent). Linux gives it only on
    request; oneDNN asks on its first AMX matmul, vLLM's CPU attention kernel does not. The probe
    runs that kernel at KV-cache set-up, before any matmul of an eager start-up, where it would
    otherwise die of SIGILL (seen on Xeon with AMX, bf16, --enforce-eager)."""
    return bool(torch.cpu._init_amx())


def probe_layout(layer, impl, build_metadata, kv_shape, dtype: torch.dtype, device: torch.device,
                 num_heads: int, scale: float, split=split_kv) -> LayoutReport:
    """Check the reader `split` on scratch blocks written by `impl` (never the serving cache).

    layer: vLLM's Attention module of layer L (carries the CPU ISA and the k/v scales);
    impl: its unwrapped attention impl; build_metadata(seq_lens, block_table, slot_mapping,
    query_start_loc) -> the backend's metadata for one decode row; kv_shape: layer L's
    [num_blocks, Hkv, block_size, 2*D].
    """
    backend = layer.attn_backend.get_name()
    isa = getattr(layer, "isa", None)

    def report(packing=None, err=None, tol=None, reason=None):
        return LayoutReport(backend, isa, packing, err, tol, reason)

    if isa == "amx" and not _amx_granted():
        return report(reason="ISA amx: the kernel did not grant this process the AMX tile state "
                             "(arch_prctl ARCH_REQ_XCOMP_PERM); vLLM's AMX attention cannot run here")
    try:
        _, hkv, n, two_d = kv_shape
        d = two_d // 2
        scratch = torch.zeros(3, hkv, n, two_d, dtype=dtype, device=device)
        table = torch.tensor([[2, 0]], dtype=torch.int32, device=device)  # not the identity
        t = 2 * n
        positions = torch.arange(t, device=device)
        slots = table[0].long()[positions // n] * n + positions % n
        gen = torch.Generator().manual_seed(0)
        key = torch.randn(t, hkv, d, generator=gen).to(dtype).to(device)
        value = torch.randn(t, hkv, d, generator=gen).to(dtype).to(device)
        if getattr(impl, "forward_includes_kv_cache_update", False) or not hasattr(impl, "do_kv_cache_update"):
            return report(reason=f"attention backend {backend}: no separate cache-write op to probe the layout with")
        impl.do_kv_cache_update(layer, key, value, scratch, slots)
        kv: PagedKV = split(scratch, backend, isa)
        for part, written in (("key", key), ("value", value)):
            read = kv.tokens(part, table[0], positions).transpose(0, 1)
            if not torch.equal(read, written):
                bad = int((read != written).any(dim=-1).any(dim=-1).nonzero()[0])
                return report(kv.packing, reason=f"{part}s read back from a {backend} cache (ISA {isa}) differ "
                                                 f"from those written, first at token {bad}")

        seq_len = t - 5  # ends inside the second block
        q = (QUERY_GAIN * torch.randn(1, num_heads, d, generator=gen)).to(dtype).to(device)
        seq_lens = torch.tensor([seq_len], dtype=torch.int32, device=device)
        meta = build_metadata(seq_lens, table, slots[seq_len - 1:seq_len],
                              torch.tensor([0, 1], dtype=torch.int32, device=device))
        stock = torch.zeros(1, num_heads, d, dtype=dtype, device=device)
        impl.forward(layer, q, key[:1], value[:1], scratch, meta, output=stock)

        vid_start, vid_len = 3, n  # a video run across the block boundary
        vid = torch.arange(vid_start, vid_start + vid_len, device=device)
        values = kv.tokens("value", table[0], vid)[None]  # [1, Hkv, P, D]: Vn == V0
        keys, vals, rows = (kv.key, kv.value, table) if kv.strided else kv.contiguous_rows(table, seq_lens)
        ours, _ = controlled_attention(q, keys, vals, rows, seq_lens,
                                       torch.tensor([[vid_start]], dtype=torch.int32, device=device),
                                       torch.tensor([[vid_len]], dtype=torch.int32, device=device),
                                       values, scale)
        err = float((ours.float() - stock.float()).abs().max())
        tol = attention_tolerance(dtype, float(value.float().abs().max()))
        if not err <= tol:
            return report(kv.packing, err, tol,
                          f"the overlay's attention on a {backend} cache (ISA {isa}) differs from the backend's "
                          f"by {err:.3g} (tolerance {tol:.3g})")
        return report(kv.packing, err, tol)
    except Exception as e:  # noqa: BLE001 - any failure means the layout is not proven
        return report(reason=f"the KV-cache layout probe ({backend}, ISA {isa}) failed: {type(e).__name__}: {e}")


def decode_metadata(builder):
    """build_metadata for `probe_layout` through the backend's own metadata builder (one decode
    row), as vLLM's runner builds it for a step."""
    from vllm.v1.attention.backend import CommonAttentionMetadata

    def build(seq_lens, block_table, slot_mapping, query_start_loc):
        seq_len = int(seq_lens[0])
        common = CommonAttentionMetadata(
            query_start_loc=query_start_loc, query_start_loc_cpu=query_start_loc.cpu(), seq_lens=seq_lens,
            num_reqs=1, num_actual_tokens=1, max_query_len=1, max_seq_len=seq_len,
            block_table_tensor=block_table, slot_mapping=slot_mapping,
            seq_lens_cpu_upper_bound=seq_lens.cpu())
        return builder.build(common_prefix_len=0, common_attn_metadata=common)

    return build
