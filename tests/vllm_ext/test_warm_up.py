"""The start-up kernel warm-up (run on GPUs so Triton compiles before the first controlled
request) is called with the shapes the kernels accept: run here through their CPU paths."""

from __future__ import annotations

import torch

from vreason.server.vllm_ext.warm_up import warm_up_kernels


def test_warm_up_runs_every_kernel_once_on_valid_shapes():
    seconds = warm_up_kernels(torch.device("cpu"), num_heads=4, num_kv_heads=2, head_dim=32, vocab=100,
                              cache_dtype=torch.float32)
    assert seconds >= 0.0
