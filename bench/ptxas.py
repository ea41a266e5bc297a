"""Registers and spills of every V-Reason Triton kernel, from `ptxas -v`, for sm_80 and sm_90.

No GPU needed: each main variant is compiled ahead of time with the ptxas bundled in Triton's
wheel, at Qwen2.5-VL-7B shapes (28 query / 4 KV heads, D = 128, block size 16, a 32768-token
table, vocabulary 152064) and the layouts serving passes (vreason.kernels.aot). Prints one
Markdown table. Speed is not measured (that needs a GPU: bench/kernels.py).

    python bench/ptxas.py                         # the kernels of this tree
    python bench/ptxas.py --ref 1e9750b           # those of a commit (launchers then recorded)

With --ref, the commit's kernels are extracted into a temporary package and their public
launchers are called with the same inputs while the kernels' launch is recorded instead of
run; a plain-float `_M_FLOOR` is made a constexpr first (commits before the fix did not compile).
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    sys.exit("bench/ptxas.py compiles for a GPU: run it without TRITON_INTERPRET=1")

import torch  # noqa: E402

from vreason.kernels import aot  # noqa: E402
from vreason.kernels._utils import Launch  # noqa: E402

HQ, HKV, D, VOCAB = 28, 4, 128, 152064
BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
NAMES = {"_controlled_attention_kernel": "attention", "_controlled_attention_combine_kernel": "combine",
         "_entropy_grad_kernel": "entropy_grad", "_controller_update_kernel": "controller_update"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ref", help="a git commit: report its kernels instead of this tree's")
    p.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="compute capabilities")
    return p.parse_args(argv)


def variants() -> list[tuple[str, str, tuple, dict]]:
    """(op, label, inputs, launcher keywords) of the main variants."""
    out = []
    for dtype, vdtype in ((BF16, BF16), (FP16, FP16), (BF16, FP32), (FP32, FP32)):
        inputs = aot.attention_inputs(HQ, HKV, D, dtype, values_dtype=vdtype)
        for splits in (1, 8):
            split = "split" if splits > 1 else "not split"
            label = f"q/cache {str(dtype)[6:]}, values {str(vdtype)[6:]}, {split}"
            out.append(("attention", label, inputs, {"num_splits": splits}))
    for nr in (True, False):
        out.append(("update", f"norm_restore={nr}", aot.update_inputs(HKV, D, norm_restore=nr), {}))
    for dtype in (FP32, BF16):
        out.append(("entropy", f"logits {str(dtype)[6:]}, V={VOCAB}", aot.entropy_inputs(VOCAB, dtype), {}))
    return out


def current_launchers() -> dict:
    mods = {op: importlib.import_module(f"vreason.kernels.{op}.triton")
            for op in ("controlled_attention", "controller_update", "entropy_grad")}
    return {
        "attention": lambda a, kw: mods["controlled_attention"].controlled_attention_launches(*a, **kw)[2],
        "update": lambda a, kw: mods["controller_update"].controller_update_launches(*a, **kw)[1],
        "entropy": lambda a, kw: mods["entropy_grad"].entropy_grad_launches(*a, **kw)[2],
    }


def ref_launchers(ref: str, tmp: Path) -> dict:
    """The launchers of commit `ref`, each returning the launches it makes (recorded, not run)."""
    root = Path(__file__).resolve().parents[1]
    pkg = tmp / "vreason_ref_kernels"
    pkg.mkdir()
    archive = subprocess.run(["git", "-C", str(root), "archive", ref, "kernels"], check=True,
                             capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(pkg), "--strip-components=1"], input=archive.stdout, check=True)
    for f in pkg.glob("*/triton.py"):
        f.write_text(f.read_text().replace("_M_FLOOR = -1.0e30", "_M_FLOOR = tl.constexpr(-1.0e30)"))
    sys.path.insert(0, str(tmp))
    mods = {op: importlib.import_module(f"vreason_ref_kernels.{op}.triton")
            for op in ("controlled_attention", "controller_update", "entropy_grad")}

    def recorded(mod, fn_name):
        def launches(args, kw):
            kernels = [v for v in vars(mod).values() if hasattr(v, "fn") and hasattr(v, "params")]
            made = []
            for k in kernels:
                k.run = lambda *a, grid, warmup, _k=k, **kw_: made.append(Launch(_k, grid, a, kw_))
            try:
                getattr(mod, fn_name)(*args, **kw)
            finally:
                for k in kernels:
                    del k.run
            return made
        return launches

    return {"attention": recorded(mods["controlled_attention"], "controlled_attention_triton"),
            "update": recorded(mods["controller_update"], "controller_update_triton"),
            "entropy": recorded(mods["entropy_grad"], "entropy_grad_triton")}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TRITON_CACHE_DIR"] = str(Path(tmp) / "cache")  # compile for real, leave no cache
        launchers = ref_launchers(args.ref, Path(tmp)) if args.ref else current_launchers()
        print(f"kernels: {args.ref or 'this tree'}; ptxas {aot.ptxas_path()}\n")
        print("| kernel | variant | arch | num_warps | constexprs | registers | spill stores / loads (B) "
              "| stack (B) |")
        print("|---|---|---|---|---|---|---|---|")
        seen = set()
        for op, label, inputs, kw in variants():
            for launch in launchers[op](inputs, kw):
                for arch in args.arch:
                    spec = aot.specialization(launch, aot.GPUTarget("cuda", arch, 32))
                    if spec in seen:  # the combine kernel is the same for every split variant of a dtype
                        continue
                    seen.add(spec)
                    use = aot.ptxas_usage(aot.compile_spec(spec), arch)
                    opts = dict(spec.options)
                    cx = ", ".join(f"{k}={v}" for k, v in spec.constexprs
                                   if k.startswith("BLOCK_") or k in ("G", "SPLIT", "NORM_RESTORE", "UPCAST"))
                    spills = f"{use['spill_stores']} / {use['spill_loads']}"
                    print(f"| {NAMES.get(spec.name, spec.name)} | {label} | sm_{arch} | {opts['num_warps']} "
                          f"| {cx} | {use['registers']} | {spills} | {use['stack']} |", flush=True)


if __name__ == "__main__":
    main()
