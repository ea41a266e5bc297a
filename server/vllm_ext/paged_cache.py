"""Reading one layer's paged KV cache with the attention backend's own K/V split.

vLLM gives each attention layer a view [num_blocks, Hkv, block_size, 2*D], and the backends
split it differently: the CPU backend stores, per block and head, all block_size keys and then
all values; FlashAttention/Triton store each token's key then its value in the last dimension.
Both splits are returned as strided [num_blocks, Hkv, block_size, D] views (no copy).
"""

from __future__ import annotations

import torch

CPU_BACKENDS = ("CPU_ATTN",)
TOKEN_INTERLEAVED_BACKENDS = ("FLASH_ATTN", "TRITON_ATTN", "FLASHINFER", "FLEX_ATTENTION")


def split_kv(kv_cache: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """kv_cache: [B, Hkv, N, 2*D] -> (key_cache, value_cache), each [B, Hkv, N, D]."""
    b, h, n, two_d = kv_cache.shape
    d = two_d // 2
    if backend in CPU_BACKENDS:
        key, value = kv_cache.view(b, h, 2 * n, d).chunk(2, dim=2)
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
