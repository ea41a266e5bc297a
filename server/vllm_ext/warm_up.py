"""Kernel warm-up at start-up: Triton compiles on a GPU before the first controlled request."""

from __future__ import annotations

import time

import torch


def warm_up_kernels(device, num_heads: int, num_kv_heads: int, head_dim: int, vocab: int,
                    cache_dtype: torch.dtype) -> float:
    """Run each kernel once on tiny inputs with the deployment's head shapes, so Triton compiles
    at start-up (GPU) and not on the first controlled request; returns the seconds it took."""
    from vreason.kernels import controlled_attention, controller_update, entropy_grad

    t0 = time.perf_counter()
    f32 = lambda *shape: torch.zeros(*shape, dtype=torch.float32, device=device)  # noqa: E731
    i32 = lambda *shape, fill=0: torch.full(shape, fill, dtype=torch.int32, device=device)  # noqa: E731
    entropy_grad(f32(1, vocab), f32(1) + 1)
    n = 2 * num_kv_heads
    controller_update(f32(n, head_dim), f32(n, head_dim), f32(n, head_dim), f32(n, head_dim) + 1,
                      f32(n, head_dim), i32(n, fill=1), f32(n) + 1e-3, norm_restore=True)
    block = 16
    cache = torch.zeros(1, num_kv_heads, block, head_dim, dtype=cache_dtype, device=device)
    controlled_attention(torch.zeros(1, num_heads, head_dim, dtype=cache_dtype, device=device), cache, cache,
                         i32(1, 1), i32(1, fill=4), i32(1, 1), i32(1, 1, fill=2),
                         torch.zeros(1, num_kv_heads, 2, head_dim, dtype=cache_dtype, device=device),
                         head_dim ** -0.5)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0
