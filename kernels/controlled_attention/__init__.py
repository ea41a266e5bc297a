"""Last-layer paged decode attention with controlled values overlaid at video positions."""

from __future__ import annotations

import math

import torch

from .._utils import CheckedOnce, check, check_dtype, check_same_device, check_shape, signature, use_triton
from .batched import controlled_attention_batched
from .reference import controlled_attention_reference

__all__ = ["controlled_attention"]

_FLOATS = (torch.float32, torch.bfloat16, torch.float16)
_CHECKED = CheckedOnce()


def controlled_attention(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    vid_start: torch.Tensor,
    vid_len: torch.Tensor,
    values: torch.Tensor,
    scale: float,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode attention for controlled rows, returning the output and the video weights.

    Position p of row r lives in block `block_table[r, p // block_size]` at offset
    `p % block_size`. The video positions of row r are the runs
    `[vid_start[r, k], vid_start[r, k] + vid_len[r, k])` taken in order (length 0 = unused); the
    i-th of them (dense index i) reads its value from `values[r, :, i]` instead of the cache.
    Keys always come from `key_cache`. Query head g uses kv head g // (Hq // Hkv).

    Args:
        q: [R, Hq, D] decode queries (rotary already applied); fp32, bf16 or fp16.
        key_cache, value_cache: [num_blocks, Hkv, block_size, D], dtype of q, any strides
            (e.g. the two halves of vLLM's per-layer [num_blocks, Hkv, block_size, 2 * D] cache).
        block_table: [R, max_blocks] int32.
        seq_lens: [R] int32, context length including the current token (>= 1).
        vid_start, vid_len: [R, max_runs] int32; runs do not overlap, lie in [0, seq_len) and
            hold at most P positions (checked by the reference only: no host sync on GPU).
        values: [R, Hkv, P, D] controlled values, fp32 or the dtype of q.
        scale: softmax scale.
        backend: "auto" (Triton on CUDA, the vectorised torch path otherwise), "torch" (the
            reference, which also checks the runs), or "triton" (CUDA, or CPU under
            TRITON_INTERPRET=1).

    Returns:
        out: [R, Hq, D], dtype of q: softmax(scale * q K^T) @ V with the overlay, fp32 math.
        weights: [R, Hq, P] fp32: the softmax probabilities at the video positions in dense
            order, 0 past the row's video length. With them the attention output is
            `c + sum_i weights[..., i] * values[..., i]` for a constant c.
    """
    args = (q, key_cache, value_cache, block_table, seq_lens, vid_start, vid_len, values, scale)
    key = signature(*args)
    if key not in _CHECKED:
        _check(*args)
        _CHECKED.add(key)
    R, Hq, D = q.shape
    device = q.device
    triton_path = use_triton(backend, device)
    if R == 0:
        return (
            torch.empty(0, Hq, D, dtype=q.dtype, device=device),
            torch.empty(0, Hq, values.shape[2], dtype=torch.float32, device=device),
        )
    if triton_path:
        from .triton import controlled_attention_triton

        return controlled_attention_triton(
            q, key_cache, value_cache, block_table, seq_lens, vid_start, vid_len, values, float(scale)
        )
    impl = controlled_attention_batched if backend == "auto" else controlled_attention_reference
    return impl(q, key_cache, value_cache, block_table, seq_lens, vid_start, vid_len, values, float(scale))


def _check(q, key_cache, value_cache, block_table, seq_lens, vid_start, vid_len, values, scale) -> None:
    for name, t in (("q", q), ("key_cache", key_cache), ("value_cache", value_cache)):
        check_dtype(name, t, _FLOATS)
    check_shape("q", q, (None, None, None))
    R, Hq, D = q.shape
    check_shape("key_cache", key_cache, (None, None, None, D))
    Hkv = key_cache.shape[1]
    check(key_cache.shape[2] > 0, "key_cache must have block_size > 0")
    check_shape("value_cache", value_cache, tuple(key_cache.shape))
    check(Hkv > 0 and Hq % Hkv == 0, f"query heads ({Hq}) must be a multiple of kv heads ({Hkv})")
    check(
        key_cache.dtype == q.dtype and value_cache.dtype == q.dtype,
        f"q, key_cache and value_cache must share a dtype, got {q.dtype}, {key_cache.dtype}, "
        f"{value_cache.dtype}",
    )
    check_shape("block_table", block_table, (R, None))
    check(block_table.shape[1] > 0, "block_table must have at least one column")
    check_shape("seq_lens", seq_lens, (R,))
    check_shape("vid_start", vid_start, (R, None))
    check_shape("vid_len", vid_len, tuple(vid_start.shape))
    for name, t in (("block_table", block_table), ("seq_lens", seq_lens),
                    ("vid_start", vid_start), ("vid_len", vid_len)):
        check_dtype(name, t, (torch.int32,))
    check_shape("values", values, (R, Hkv, None, D))
    check_dtype("values", values, (torch.float32, q.dtype))
    check(isinstance(scale, (int, float)) and math.isfinite(scale),
          f"scale must be a finite float, got {scale!r}")
    check_same_device(
        q=q, key_cache=key_cache, value_cache=value_cache, block_table=block_table,
        seq_lens=seq_lens, vid_start=vid_start, vid_len=vid_len, values=values,
    )
