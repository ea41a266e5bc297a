"""Kernel warm-up at start-up: Triton compiles on a GPU before the first controlled request.

Triton compiles one variant per specialisation of a kernel's arguments (dtypes, constexprs,
int arguments equal to 1 or a multiple of 16, pointer alignment). Warm-up launches each kernel
once per variant serving will launch, with the tensors laid out as serving lays them out
(`vreason.kernels.aot`: layer L's cache halves, a block table max_model_len / block_size wide,
the slab's values view, the slab rows the update works on), so the first controlled request
compiles nothing inside the attention op. The per-step values (rows, runs, video positions,
splits) are not specialised by the kernels, so any value stands for all of them; what does
change the variant is enumerated here: split or not (from the rows serving can attend), norm
restore on or off, the vocabulary widths. tests/vllm_ext/test_warm_up.py compares the variants
warm-up launches with those of a simulated serving step.
"""

from __future__ import annotations

import time

import torch


def warm_up_kernels(device: torch.device, overlay, slab, *, block_size: int, max_model_len: int,
                    max_rows: int, vocab_sizes: tuple[int, ...]) -> float:
    """Launch every kernel variant serving will launch; returns the seconds it took.

    overlay: layer L's LayerOverlay (head counts and size); slab: the ControllerSlab (its values'
    dtype and shapes); block_size, max_model_len: the KV cache's; max_rows: the most rows one
    step attends (max_num_seqs); vocab_sizes: the widths of the logits the controller passes to
    entropy_grad (vLLM's logits and the tail's lm_head rows).
    """
    from vreason.kernels import aot, controlled_attention, controller_update, entropy_grad
    from vreason.kernels.controlled_attention.triton import split_count

    t0 = time.perf_counter()
    hq, hkv, d = overlay.num_heads, overlay.num_kv_heads, overlay.head_dim
    max_context = -(-max_model_len // block_size) * block_size
    # the fewest rows that take each path (split context or not) over the rows serving can attend
    rows_by_split: dict[bool, int] = {}
    for rows in range(1, max(1, min(max_rows, slab.slots)) + 1):
        rows_by_split.setdefault(split_count(device, rows, hkv, max_context) > 1, rows)
    for rows in rows_by_split.values():
        controlled_attention(*aot.attention_inputs(hq, hkv, d, slab.vn.dtype, rows=rows,
                                                   block_size=block_size, max_model_len=max_model_len,
                                                   device=device))
    for norm_restore in (True, False):
        controller_update(*aot.update_inputs(hkv, d, norm_restore=norm_restore, device=device))
    for vocab in sorted(set(vocab_sizes)):
        entropy_grad(*aot.entropy_inputs(vocab, torch.float32, device=device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0
