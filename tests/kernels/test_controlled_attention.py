"""controlled_attention: reference vs a dense gather, Triton vs reference, layouts, edge cases."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import pytest
import torch

from tests.helpers.numerics import assert_within, attention_truth
from vreason.kernels import controlled_attention
from vreason.kernels.controlled_attention.reference import controlled_attention_reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@dataclass(frozen=True)
class Case:
    seq_lens: tuple[int, ...]
    Hkv: int
    G: int
    D: int
    block_size: int
    n_runs: int
    # "gpu": kv[..., :D] / kv[..., D:]; "cpu": kv.view(B, H, 2 * N, D).chunk(2, dim=2)
    layout: str = "gpu"

    def __str__(self) -> str:
        seqs = "-".join(map(str, self.seq_lens))
        return f"L{seqs}-H{self.Hkv}-G{self.G}-D{self.D}-bs{self.block_size}-runs{self.n_runs}-{self.layout}"


def random_runs(gen: torch.Generator, seq_len: int, n_runs: int) -> list[tuple[int, int]]:
    """n_runs disjoint (start, length) runs in [0, seq_len), in random order, plus one unused run."""
    cuts = torch.randint(0, seq_len + 1, (2 * n_runs,), generator=gen).sort().values.tolist()
    runs = [(cuts[2 * i], cuts[2 * i + 1] - cuts[2 * i]) for i in range(n_runs)]
    runs = [runs[i] for i in torch.randperm(n_runs, generator=gen).tolist()]
    runs.insert(int(torch.randint(0, n_runs + 1, (1,), generator=gen)), (0, 0))
    return runs


def make_inputs(case: Case, dtype: torch.dtype, seed: int, device, values_dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    R, Hkv, D, bs = len(case.seq_lens), case.Hkv, case.D, case.block_size
    n_blocks = [-(-s // bs) for s in case.seq_lens]
    num_blocks = sum(n_blocks) + 3
    kv = torch.randn(num_blocks, Hkv, bs, 2 * D, generator=gen).to(dtype)
    if case.layout == "gpu":
        k, v = kv[..., :D], kv[..., D:]
    else:
        k, v = kv.view(num_blocks, Hkv, 2 * bs, D).chunk(2, dim=2)
    # unused table slots hold a huge block id: reading one would fault or go NaN
    block_table = torch.full((R, max(n_blocks) + 2), 2**30, dtype=torch.int32)
    perm = torch.randperm(num_blocks, generator=gen)
    for r, n in enumerate(n_blocks):
        block_table[r, :n] = perm[sum(n_blocks[:r]) : sum(n_blocks[: r + 1])].int()
    runs = [random_runs(gen, s, case.n_runs) for s in case.seq_lens]
    vid_start = torch.tensor([[s for s, _ in rr] for rr in runs], dtype=torch.int32)
    vid_len = torch.tensor([[n for _, n in rr] for rr in runs], dtype=torch.int32)
    P = int(vid_len.sum(1).max()) + 3
    values = torch.randn(R, Hkv, P, D, generator=gen).to(values_dtype)
    q = torch.randn(R, Hkv * case.G, D, generator=gen).to(dtype)
    seq_lens = torch.tensor(case.seq_lens, dtype=torch.int32)
    args = [q, k, v, block_table, seq_lens, vid_start, vid_len, values]
    return [a.to(device) for a in args] + [case.D**-0.5]


def check_against_truth(args, out, weights, tf32_pv: bool = False, truncates: bool = False) -> None:
    """out/weights of any implementation vs the float64 ground truth, within bounds derived from
    the context length and head dim (tests/helpers/numerics.py): comparing two fp32 results with
    each other under a fixed tolerance depends on each machine's summation order."""
    cpu = [a.cpu() if torch.is_tensor(a) else a for a in args]
    true_out, true_w, tol_out, tol_w = attention_truth(*cpu, out_dtype=out.dtype, tf32_pv=tf32_pv,
                                                       truncates=truncates)
    assert_within("out", true_out, out, tol_out)
    assert_within("weights", true_w, weights, tol_w)


def triton_uses_tf32(q: torch.Tensor) -> bool:
    """The kernel's p @ v runs in tf32 for half inputs on a GPU (see its launcher)."""
    return q.is_cuda and q.dtype != torch.float32


def triton_truncates(q: torch.Tensor) -> bool:
    """Triton's CPU interpreter converts fp32 to bf16 by truncation (a GPU rounds to nearest)."""
    return not q.is_cuda and q.dtype == torch.bfloat16


CPU_CASES = [
    Case((50, 37), Hkv=2, G=1, D=32, block_size=16, n_runs=1),
    Case((70, 33, 129), Hkv=2, G=4, D=64, block_size=16, n_runs=3),
    Case((45,), Hkv=1, G=7, D=32, block_size=32, n_runs=2),
    Case((100, 17), Hkv=2, G=7, D=128, block_size=32, n_runs=1, layout="cpu"),
    Case((33, 90), Hkv=1, G=4, D=128, block_size=16, n_runs=4, layout="cpu"),
    Case((1, 64), Hkv=2, G=1, D=64, block_size=32, n_runs=0),
    Case((29, 61), Hkv=3, G=2, D=80, block_size=16, n_runs=2),
]
GPU_CASES = [
    Case((4000, 1500, 16001), Hkv=4, G=7, D=128, block_size=16, n_runs=1),
    Case((4099, 2048), Hkv=4, G=7, D=128, block_size=32, n_runs=24, layout="cpu"),
    Case((777,) * 40, Hkv=2, G=4, D=64, block_size=16, n_runs=3),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CPU_CASES, ids=str)
def test_reference_matches_dense(case, dtype):
    args = make_inputs(case, dtype, seed=1, device="cpu")
    check_against_truth(args, *controlled_attention_reference(*args))


def test_reference_both_cache_splits_agree_with_dense():
    """Two stride patterns over one [B, H, N, 2D] buffer: kv[..., :D] (vLLM's FlashAttention split)
    and view(2N).chunk(2) (a block-major split; vLLM's CPU backend in fact stores keys transposed,
    see server/vllm_ext/paged_cache.py)."""
    for layout in ("gpu", "cpu"):
        args = make_inputs(Case((41, 66), 2, 4, 32, 16, 2, layout), torch.float32, 3, "cpu")
        assert not args[1].is_contiguous() or layout == "cpu"
        check_against_truth(args, *controlled_attention_reference(*args))
    # the CPU split's key half of block b is the first N rows of that block's 2N x D buffer
    kv = torch.arange(2 * 4 * 3 * 2 * 8, dtype=torch.float32).view(2, 4, 3, 16)
    k_cpu, _ = kv.view(2, 4, 6, 8).chunk(2, dim=2)
    assert torch.equal(k_cpu[1, 2, 1], kv[1, 2].reshape(-1)[8:16])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CPU_CASES, ids=str)
def test_batched_torch_path_matches_reference(case, dtype):
    args = make_inputs(case, dtype, seed=5, device="cpu")
    check_against_truth(args, *controlled_attention(*args))  # "auto" on CPU: the vectorised path
    check_against_truth(args, *controlled_attention_reference(*args))


def _check_triton(case, dtype, seed, device, **kw):
    """The Triton kernel and the fp32 reference, each against the float64 truth."""
    args = make_inputs(case, dtype, seed, device, **kw)
    out, weights = controlled_attention(*args, backend="triton")
    assert out.dtype == dtype and weights.dtype == torch.float32
    check_against_truth(args, out, weights, tf32_pv=triton_uses_tf32(args[0]), truncates=triton_truncates(args[0]))
    cpu = [a.cpu() if torch.is_tensor(a) else a for a in args]
    check_against_truth(cpu, *controlled_attention_reference(*cpu))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CPU_CASES, ids=str)
def test_triton_matches_reference(case, dtype, device, poison_empty):
    _check_triton(case, dtype, zlib.crc32(str(case).encode()), device)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", GPU_CASES, ids=str)
def test_triton_matches_reference_large(case, dtype, device, poison_empty):
    _check_triton(case, dtype, 7, device)


@pytest.mark.parametrize("num_splits", [1, 2, 3, 8])
def test_triton_context_splits(num_splits, device, poison_empty):
    """More splits than key tiles leaves some splits empty; the merge must ignore them."""
    from vreason.kernels.controlled_attention.triton import controlled_attention_triton

    args = make_inputs(Case((150, 20, 64), 2, 4, 32, 16, 2), torch.float32, 5, device)
    check_against_truth(args, *controlled_attention_triton(*args, num_splits=num_splits))


def test_triton_values_in_cache_dtype(device):
    _check_triton(CPU_CASES[1], torch.bfloat16, 11, device, values_dtype=torch.bfloat16)


@pytest.mark.gpu
def test_triton_int64_offsets(device):
    """A cache of > 2**31 elements: block offsets overflow int32 if not widened."""
    D, bs, num_blocks = 128, 16, 2**31 // (16 * 256) + 64
    kv = torch.zeros(num_blocks, 1, bs, 2 * D, dtype=torch.bfloat16, device=device)
    high = torch.arange(num_blocks - 4, num_blocks, device=device)
    kv[high] = torch.randn(4, 1, bs, 2 * D, device=device).bfloat16()
    block_table = high.int()[None]
    seq_lens = torch.tensor([60], dtype=torch.int32, device=device)
    vid_start = torch.tensor([[10]], dtype=torch.int32, device=device)
    vid_len = torch.tensor([[30]], dtype=torch.int32, device=device)
    values = torch.randn(1, 1, 30, D, device=device)
    q = torch.randn(1, 7, D, device=device).bfloat16()
    args = [q, kv[..., :D], kv[..., D:], block_table, seq_lens, vid_start, vid_len, values, D**-0.5]
    check_against_truth(args, *controlled_attention(*args), tf32_pv=triton_uses_tf32(q), truncates=triton_truncates(q))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_empty_batch(backend, device):
    args = make_inputs(Case((20,), 2, 4, 32, 16, 1), torch.float32, 0, device)
    q, k, v, bt, sl, vs, vl, vals, scale = args
    out, weights = controlled_attention(q[:0], k, v, bt[:0], sl[:0], vs[:0], vl[:0], vals[:0], scale,
                                        backend=backend)
    assert out.shape == (0, 8, 32) and weights.shape == (0, 8, vals.shape[2])


def test_invalid_inputs_raise(monkeypatch):
    args = make_inputs(Case((20, 30), 2, 4, 32, 16, 1), torch.float32, 0, "cpu")
    q, k, v, bt, sl, vs, vl, vals, scale = args
    bad = {
        "q rank": (q[0], k, v, bt, sl, vs, vl, vals, scale),
        "heads": (q[:, :7], k, v, bt, sl, vs, vl, vals, scale),
        "head dim": (q[..., :16], k, v, bt, sl, vs, vl, vals, scale),
        "cache dtype": (q, k.half(), v.half(), bt, sl, vs, vl, vals, scale),
        "table dtype": (q, k, v, bt.long(), sl, vs, vl, vals, scale),
        "seq_lens rows": (q, k, v, bt, sl[:1], vs, vl, vals, scale),
        "runs shape": (q, k, v, bt, sl, vs, vl[:, :1], vals, scale),
        "values heads": (q, k, v, bt, sl, vs, vl, vals[:, :1], scale),
        "values dtype": (q, k, v, bt, sl, vs, vl, vals.double(), scale),
        "scale": (q, k, v, bt, sl, vs, vl, vals, float("nan")),
    }
    for name, a in bad.items():
        with pytest.raises(ValueError):
            controlled_attention(*a)
            pytest.fail(name)
    with pytest.raises(ValueError, match="backend"):
        controlled_attention(*args, backend="cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        controlled_attention(*args, backend="triton")
    # runs outside the context are caught by the reference
    with pytest.raises(ValueError, match="video runs"):
        controlled_attention(q, k, v, bt, sl, vs + 25, vl, vals, scale, backend="torch")
