"""Every Triton kernel variant the launchers can choose compiles for sm_80 and sm_90 (no GPU).

The interpreter runs the other kernel tests on CPU and accepts code that Triton's compiler
refuses (a plain-float global read inside a kernel, for one). Here each variant is compiled
ahead of time, in a subprocess that never loads the interpreter (compiling after it has run
fails), with the ptxas bundled in Triton's wheel. The variants are those the launchers make
(`*_launches` in each op's triton.py, through vreason.kernels.aot) at Qwen2.5-VL 3B/7B/32B/72B
shapes plus G = 1..8 query heads per KV head, D = 128, bf16/fp16/fp32, split and not split,
a real vocabulary, the update's real block sizes; equal specialisations compile once.

Run as a script, this file is that subprocess: `python tests/kernels/test_aot_compile.py`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

QWEN25_VL = {"3B": (16, 2), "7B": (28, 4), "32B": (40, 8), "72B": (64, 8)}  # (query heads, kv heads)
HEAD_DIM = 128
VOCABS = (151936, 152064)  # Qwen2.5-VL 3B; 7B/32B/72B
# per-step values (rows, runs, video positions) vary here only to show they add no variant
PER_STEP = ((1, 1, 1), (33, 16, 48))
# the variants expected per target; a change that makes serving compile more must update these
EXPECTED = {"_controlled_attention_kernel": 28, "_controlled_attention_combine_kernel": 6,
            "_entropy_grad_kernel": 3, "_controller_update_kernel": 2}


def variants() -> dict:
    """{Spec: label} over the matrix, for sm_80 and sm_90, deduplicated."""
    import torch

    from vreason.kernels import aot

    bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    heads = {f"Qwen2.5-VL-{k}": v for k, v in QWEN25_VL.items()}
    heads.update({f"G={g}": (2 * g, 2) for g in range(1, 9)})
    made = []  # (label, launch)
    for name, (hq, hkv) in heads.items():
        for dtype, vdtype in ((bf16, bf16), (fp16, fp16), (fp32, fp32), (bf16, fp32), (fp16, fp32)):
            for block_size in (16, 32, 64) if dtype == vdtype == bf16 else (16,):
                for rows, runs, positions in PER_STEP:
                    for splits in (1, 8):
                        label = f"attention {name} {dtype}/{vdtype} block {block_size} S={splits}"
                        for launch in aot.attention_launches(hq, hkv, HEAD_DIM, dtype, values_dtype=vdtype,
                                                             rows=rows, runs=runs, positions=positions,
                                                             block_size=block_size, num_splits=splits):
                            made.append((label, launch))
    for vocab in VOCABS:
        for dtype in (fp32, bf16, fp16):
            for rows in (1, 7):
                made += [(f"entropy_grad V={vocab} {dtype}", x)
                         for x in aot.entropy_launches(vocab, dtype, rows=rows)]
    for _, hkv in QWEN25_VL.values():
        for positions in (1, 100, 160):
            for nr in (True, False):
                made += [(f"controller_update Hkv={hkv} P={positions} norm_restore={nr}", x)
                         for x in aot.update_launches(hkv, HEAD_DIM, positions=positions, norm_restore=nr)]
    specs = {}
    for target in (aot.SM80, aot.SM90):
        for label, launch in made:
            specs.setdefault(aot.specialization(launch, target), label)
    return specs


def compile_shard(shard: int, shards: int) -> list[str]:
    """Compile every `shards`-th variant from `shard`; returns the failures."""
    from vreason.kernels import aot

    failures = []
    for i, (spec, label) in enumerate(variants().items()):
        if i % shards != shard:
            continue
        try:
            aot.compile_spec(spec)
        except Exception as e:  # noqa: BLE001 - every failure is reported
            failures.append(f"{label}: {spec.describe()}\n    {type(e).__name__}: {str(e)[-2000:]}")
    return failures


def main() -> int:
    assert "TRITON_INTERPRET" not in os.environ, "compile without TRITON_INTERPRET in the environment"
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from vreason.kernels import aot

    ptxas = Path(aot.ptxas_path())
    version = subprocess.run([str(ptxas), "--version"], capture_output=True, text=True, check=True).stdout
    print(f"ptxas {ptxas}: {version.strip().splitlines()[-1]}")
    t0 = time.perf_counter()
    specs = variants()
    counts = {}
    for spec in specs:
        counts[spec.name] = counts.get(spec.name, 0) + 1
    print(f"{len(specs)} variants (sm_80 + sm_90): {counts}; enumerated in {time.perf_counter() - t0:.1f} s")
    shards = max(1, min(2, os.cpu_count() or 1))
    with ProcessPoolExecutor(shards, mp_context=get_context("spawn")) as pool:
        failures = [f for part in pool.map(compile_shard, range(shards), [shards] * shards) for f in part]
    print(f"compiled in {time.perf_counter() - t0:.1f} s with {shards} processes")
    assert "triton.runtime.interpreter" not in sys.modules
    for f in failures:
        print("FAILED", f)
    expected = {k: 2 * v for k, v in EXPECTED.items()}
    if counts != expected:
        print(f"variant counts {counts} != expected {expected}: serving would compile other variants than "
              "these (a new specialisation or a per-step value that is specialised)")
        return 1
    return 1 if failures else 0


def test_bundled_ptxas_present():
    import triton

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    assert ptxas.is_file() and os.access(ptxas, os.X_OK), f"Triton's wheel has no ptxas at {ptxas}"


def test_every_variant_compiles(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")  # compile for real, leave nothing behind
    result = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    print(result.stdout)


def test_ptxas_report_script_starts():
    """bench/ptxas.py (the register/spill report built on the same launches) parses its options."""
    script = Path(__file__).resolve().parents[2] / "bench" / "ptxas.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, str(script), "--help"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "--ref" in result.stdout, result.stderr


if __name__ == "__main__":
    sys.exit(main())
