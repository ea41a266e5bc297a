"""The start-up kernel warm-up (run on GPUs so Triton compiles before the first controlled
request): it runs through the kernels' CPU paths, and on a simulated GPU it launches exactly the
kernel variants serving launches.

The second part needs no GPU: the dispatchers are sent down their Triton path with CPU tensors,
the attention launcher is told the device has 132 SMs (an H100 SXM), and each kernel's launch is
recorded instead of run. A record's variant is what Triton would compile for it on sm_90
(`vreason.kernels.aot.specialization`: Triton's own argument binder, so dtypes, constexprs,
ints == 1 or % 16 and pointer alignment all count). Serving is simulated through its own code:
`LayerOverlay.apply` on a vLLM-shaped decode batch (FLASH_ATTN cache, vLLM's block-table width
and buffer), the controller's `_adam` on slab slots, entropy_grad on row slices and copies of
fp32 logits.
"""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest
import torch

from vreason.server.controller.params import VReasonParams
from vreason.server.controller.slab import ControllerSlab
from vreason.server.controller.state import ControllerState
from vreason.server.vllm_ext.overlay import LayerOverlay, OverlayPlan
from vreason.server.vllm_ext.warm_up import warm_up_kernels

SMS = 132
CPU = torch.device("cpu")
OPS = ("controlled_attention", "controller_update", "entropy_grad")
KERNELS = {"controlled_attention": ("_controlled_attention_kernel", "_controlled_attention_combine_kernel"),
           "controller_update": ("_controller_update_kernel",), "entropy_grad": ("_entropy_grad_kernel",)}


def test_warm_up_runs_every_kernel_once_on_valid_shapes():
    overlay = SimpleNamespace(num_heads=4, num_kv_heads=2, head_dim=32)
    slab = ControllerSlab(4, 64, 2, 32, torch.float32, CPU)
    seconds = warm_up_kernels(CPU, overlay, slab, block_size=16, max_model_len=256, max_rows=4,
                              vocab_sizes=(100, 128))
    assert seconds >= 0.0


@pytest.fixture
def recorded(monkeypatch):
    """Kernel launches on CPU tensors are recorded, not run; `recorded()` returns the variants
    launched since the last call."""
    pytest.importorskip("triton")
    from vreason.kernels import aot
    from vreason.kernels._utils import Launch

    launches = []
    for op in OPS:
        dispatcher = importlib.import_module(f"vreason.kernels.{op}")
        monkeypatch.setattr(dispatcher, "use_triton", lambda backend, device: True)
        module = importlib.import_module(f"vreason.kernels.{op}.triton")
        for name in KERNELS[op]:
            kernel = getattr(module, name)
            monkeypatch.setattr(kernel, "run", lambda *args, grid, warmup, _k=kernel, **kw:
                                launches.append(Launch(_k, grid, args, kw)))
    # GPU constexprs even where this session runs Triton's interpreter (TRITON_INTERPRET=1)
    attention = importlib.import_module("vreason.kernels.controlled_attention.triton")
    monkeypatch.setattr(attention, "interpreting", lambda: False)
    monkeypatch.setattr(attention, "_sm_count", lambda device: SMS)

    def variants() -> set:
        out = {aot.specialization(launch, aot.SM90) for launch in launches}
        launches.clear()
        return out

    return variants


def table_width(max_model_len: int, block_size: int) -> int:
    """vLLM's block-table width (a multiple of 128 tokens), not max_model_len / block_size."""
    try:
        from vllm.v1.worker.block_table import get_block_table_width
    except ImportError:  # pragma: no cover - vLLM is installed with the project
        return -(-max_model_len // 128) * (128 // block_size)
    return get_block_table_width(-(-max_model_len // block_size), block_size)


def serve(hq: int, hkv: int, d: int, dtype: torch.dtype, block_size: int, max_model_len: int, max_rows: int,
          vocab: int, lm_rows: int) -> None:
    """Decode steps as serving runs them, over batch sizes that take both attention paths and
    requests with different run counts, video lengths and norm restore settings."""
    from vreason.server.controller.step import _adam

    slab = ControllerSlab(max_rows, 32, hkv, d, dtype, CPU)
    overlay = LayerOverlay("layer", hq, hkv, d, d ** -0.5)
    overlay.slab = slab
    layer = SimpleNamespace(attn_backend=SimpleNamespace(get_name=lambda: "FLASH_ATTN"))
    kv_cache = torch.zeros(6, hkv, block_size, 2 * d, dtype=dtype)  # layer L's [num_blocks, Hkv, bs, 2D]
    # vLLM's block-table buffer; each step's metadata holds its first rows
    tables = torch.zeros(max_rows + 3, table_width(max_model_len, block_size), dtype=torch.int32)
    threshold = -(-SMS // hkv)  # the fewest rows that fill the GPU without splitting
    batch_sizes = {1, 2, 3, threshold - 1, threshold, threshold + 1, max_rows}
    for rows in sorted(batch_sizes & set(range(1, max_rows + 1))):
        states = []
        for i in range(rows):
            runs = [(2 + 10 * k, 1 + (i + 3 * k) % 9) for k in range(1 + i % 3)]  # 1-3 runs, 1-26 positions
            params = VReasonParams(norm_restore=("token", "none")[i % 2])
            states.append(ControllerState.create(f"r{i}", params, runs, slab))
        plan = OverlayPlan.for_rows(list(enumerate(states)), [], CPU, check=False)
        meta = SimpleNamespace(query_start_loc=torch.arange(rows + 1, dtype=torch.int32),
                               block_table=tables[:rows], seq_lens=torch.full((rows,), 60, dtype=torch.int32))
        query = torch.zeros(rows, hq * d, dtype=dtype)
        result = overlay.apply(plan, layer, query, kv_cache, meta, torch.zeros(rows, hq * d, dtype=dtype))
        assert result.error is None and not result.failed, (result.error, result.failed)
        # the controller: entropy gradients of vLLM's logits rows (slices and copies) and of the
        # tail's own fp32 logits, then one Adam step per updating request
        logits = torch.zeros(min(rows, 3), vocab, dtype=dtype).float()  # as the runner reads vLLM's rows
        alpha = torch.ones(2)
        for x in (logits[:1], logits[-1:], logits[[0, -1]], torch.zeros(2, lm_rows)):
            entropy_grad(x, alpha[:x.shape[0]])
        grad = torch.zeros(rows, plan.p_max, hkv, d)
        for j, s in enumerate(states):
            _adam(s, grad[j, :s.num_positions] * 1.0)
            s.release()


def entropy_grad(*args):
    from vreason.kernels import entropy_grad as op

    return op(*args)


@pytest.mark.parametrize("hq,hkv,max_rows,max_model_len", [
    (16, 2, 256, 4000),  # Qwen2.5-VL-3B; vLLM's table (256 blocks) is wider than 4000 / 16 = 250
    (28, 4, 32, 32768),  # 7B with few rows (32 x 4 programs < 132 SMs): serving always splits
    (64, 8, 40, 32768),  # 72B
    (28, 4, 8, 200),  # a short context: never split
])
def test_warm_up_compiles_what_serving_launches(recorded, hq, hkv, max_rows, max_model_len):
    d, dtype, block_size, vocab, lm_rows = 128, torch.bfloat16, 16, 151936, 151936
    overlay = SimpleNamespace(num_heads=hq, num_kv_heads=hkv, head_dim=d)
    slab = ControllerSlab(max_rows, 32, hkv, d, dtype, CPU)
    warm_up_kernels(CPU, overlay, slab, block_size=block_size, max_model_len=max_model_len, max_rows=max_rows,
                    vocab_sizes=(vocab, lm_rows))
    warm = recorded()
    serve(hq, hkv, d, dtype, block_size, max_model_len, max_rows, vocab, lm_rows)
    serving = recorded()
    assert serving, "the simulated serving step launched nothing"
    assert serving <= warm, "serving would compile: " + "; ".join(s.describe() for s in serving - warm)
    assert warm <= serving, "warm-up compiles what serving never launches: " + "; ".join(
        s.describe() for s in warm - serving)
    splits = {dict(s.constexprs).get("SPLIT") for s in serving if s.name == "_controlled_attention_kernel"}
    assert splits == ({False} if max_model_len <= 256 else {True} if max_rows * hkv < SMS else {False, True})
