"""What Triton compiles for a launch, found without a GPU (tests, warm-up checks, bench/ptxas.py).

`specialization(launch, target)` runs Triton's own argument binder, the one `JITFunction.run`
keys its compile cache with, over a `Launch` made by a launcher: it sees the signature, the
constexprs and the attributes (int arguments == 1 or a multiple of 16, pointer alignment,
dtypes) that launching those arguments on a GPU of `target` would compile. `compile_spec`
compiles one with `triton.compile` and the ptxas bundled in Triton's wheel; `ptxas_usage` reads
its registers and spills from ptxas.

Compile only in a process that never ran Triton's interpreter (TRITON_INTERPRET=1): after it has
run, Triton's compiler fails with unrelated errors. Imports triton: not part of the CPU path.
"""

from __future__ import annotations

import functools
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
from triton.compiler import ASTSource, make_backend
from triton.compiler import compile as triton_compile
from triton.runtime.jit import JITFunction, create_function_from_signature

from ._utils import Launch
from .controlled_attention.triton import controlled_attention_launches
from .controller_update.reference import BETA1, BETA2, EPS
from .controller_update.triton import controller_update_launches
from .entropy_grad.triton import entropy_grad_launches

SM80 = GPUTarget("cuda", 80, 32)
SM90 = GPUTarget("cuda", 90, 32)


@dataclass(frozen=True)
class Spec:
    """One compiled variant: equal specs are one compile (and one entry of Triton's cache)."""

    name: str
    arch: int
    signature: tuple[tuple[str, str], ...]  # (argument, type); "constexpr" for compile-time ones
    constexprs: tuple[tuple[str, Any], ...]  # (argument, value), specialised ints == 1 included
    attrs: tuple[tuple[str, str], ...]  # (argument, attributes), e.g. tt.divisibility=16
    options: tuple[tuple[str, Any], ...]  # compile options (num_warps, num_stages, arch, ...)
    compile_args: tuple = field(compare=False, repr=False)  # what compile_spec passes to triton.compile

    def describe(self) -> str:
        cx = ", ".join(f"{k}={v}" for k, v in self.constexprs)
        opts = dict(self.options)
        return f"{self.name}[sm_{self.arch}, num_warps={opts['num_warps']}]({cx})"


@functools.lru_cache(maxsize=None)
def _jit(kernel) -> JITFunction:
    """The JITFunction of a kernel (built from the Python function under the interpreter, with
    the same do_not_specialize lists, only to bind arguments: never compiled there)."""
    return kernel if isinstance(kernel, JITFunction) else JITFunction(kernel.fn, **kernel.kwargs)


@functools.lru_cache(maxsize=None)
def _binder(kernel, target: GPUTarget):
    """(backend, argument binder) of a kernel (keyed by the launched object: a JITFunction made
    from an interpreted kernel cannot be hashed)."""
    fn = _jit(kernel)
    backend = make_backend(target)
    return backend, create_function_from_signature(fn.signature, fn.params, backend)


def specialization(launch: Launch, target: GPUTarget = SM90) -> Spec:
    """What Triton compiles for `launch` on `target` (as in `JITFunction.run`)."""
    fn = _jit(launch.kernel)
    backend, binder = _binder(launch.kernel, target)
    kwargs = dict(launch.kwargs)
    kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    bound, spec, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, options)
    names = fn.arg_names
    return Spec(
        name=fn.fn.__name__,
        arch=target.arch,
        signature=tuple(signature.items()),
        constexprs=tuple((names[path[0]], value) for path, value in sorted(constexprs.items())),
        attrs=tuple((names[path[0]], str(a)) for path, a in sorted(attrs.items()) if a),
        options=tuple(sorted((k, v) for k, v in options.__dict__.items())),
        compile_args=(fn, signature, constexprs, attrs, options, target),
    )


def compile_spec(spec: Spec):
    """Compile one variant to a cubin (Triton's on-disk cache applies: point TRITON_CACHE_DIR at
    an empty folder to really compile). Raises what Triton raises."""
    fn, signature, constexprs, attrs, options, target = spec.compile_args
    src = ASTSource(fn, signature, constexprs, attrs)
    return triton_compile(src, target=target, options=options.__dict__)


def ptxas_path(arch: int = 90) -> str:
    """The ptxas Triton compiles with (bundled in its wheel unless TRITON_PTXAS_PATH says otherwise)."""
    return get_ptxas(arch).path


def ptxas_usage(compiled, arch: int) -> dict[str, int]:
    """Registers, spill stores/loads (bytes) and stack of a compiled kernel: ptxas -v over its
    PTX with the flags Triton's own ptxas call uses (triton/backends/nvidia/compiler.py)."""
    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp) / "k.ptx"
        ptx.write_text(compiled.asm["ptx"])
        cmd = [ptxas_path(arch), "-lineinfo", "-v", "--regAllocOptLevel=2",
               f"--gpu-name={sm_arch_from_capability(arch)}", str(ptx), "-o", str(ptx.with_suffix(".o"))]
        log = subprocess.run(cmd, check=True, capture_output=True, text=True).stderr
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if regs is None or spills is None:
        raise RuntimeError(f"unexpected ptxas -v output:\n{log}")
    stack, stores, loads = map(int, spills.groups())
    return {"registers": int(regs.group(1)), "spill_stores": stores, "spill_loads": loads, "stack": stack,
            "shared": int(compiled.metadata.shared)}


# ---------------------------------------------------------------------------------------------
# Launches at serving's layouts: the tensors vLLM and the V-Reason overlay/controller pass
# (server/vllm_ext/overlay.py, server/controller/step.py), small where the size is not a stride.
# ---------------------------------------------------------------------------------------------


def attention_inputs(num_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, *,
                     values_dtype: torch.dtype | None = None, rows: int = 2, block_size: int = 16,
                     max_model_len: int = 32768, runs: int = 3, positions: int = 100, device="cpu") -> tuple:
    """controlled_attention's arguments for `rows` decode rows as the overlay passes them: layer
    L's FLASH_ATTN/TRITON_ATTN cache [num_blocks, Hkv, block_size, 2*D] split into its key and
    value halves, the rows' block table (max_model_len / block_size wide), their video runs, and
    the controlled values as the slab view `vn[slots, :p].permute(0, 2, 1, 3)`."""
    D, Hkv = head_dim, num_kv_heads
    kv = torch.zeros(2, Hkv, block_size, 2 * D, dtype=dtype, device=device)
    table = torch.zeros(rows, -(-max_model_len // block_size), dtype=torch.int32, device=device)
    seq_lens = torch.full((rows,), min(2 * block_size, max_model_len), dtype=torch.int32, device=device)
    vid_start = torch.zeros(rows, runs, dtype=torch.int32, device=device)
    vid_len = torch.zeros(rows, runs, dtype=torch.int32, device=device)
    vid_len[:, 0] = 1
    vn = torch.zeros(rows, positions, Hkv, D, dtype=values_dtype or dtype, device=device)  # [slot, p, Hkv, D]
    values = vn[torch.arange(rows, device=device), :positions].permute(0, 2, 1, 3)
    q = torch.zeros(rows, num_heads, D, dtype=dtype, device=device)
    return q, kv[..., :D], kv[..., D:], table, seq_lens, vid_start, vid_len, values, D ** -0.5


def attention_launches(*shape, num_splits: int | None = None, **kw) -> list[Launch]:
    """The launches for `attention_inputs(*shape, **kw)`; `num_splits` None: the launcher's own
    choice on that device (1 off CUDA)."""
    return controlled_attention_launches(*attention_inputs(*shape, **kw), num_splits=num_splits)[2]


def update_inputs(num_kv_heads: int, head_dim: int, *, positions: int = 100, norm_restore: bool = True,
                  device="cpu") -> tuple:
    """controller_update's arguments as the controller passes them: one slab slot's first
    `positions` positions as contiguous [P * Hkv, D] fp32 rows (ControllerSlab.rows)."""
    shape = (2, positions, num_kv_heads, head_dim)  # [slot, position, Hkv, D]
    v0, delta, m, v = (torch.zeros(shape, device=device)[1, :positions].view(-1, head_dim) for _ in range(4))
    n = v0.shape[0]
    grad = torch.zeros(n, head_dim, device=device)
    step = torch.ones(n, dtype=torch.int32, device=device)
    lr = torch.full((n,), 1e-3, device=device)
    return delta, m, v, v0, grad, step, lr, BETA1, BETA2, EPS, norm_restore


def update_launches(*shape, **kw) -> list[Launch]:
    return controller_update_launches(*update_inputs(*shape, **kw))[1]


def entropy_inputs(vocab: int, dtype: torch.dtype = torch.float32, *, rows: int = 2, device="cpu") -> tuple:
    """entropy_grad's arguments: [rows, vocab] contiguous logits (the controller passes fp32)."""
    return torch.zeros(rows, vocab, dtype=dtype, device=device), torch.ones(rows, device=device)


def entropy_launches(*shape, **kw) -> list[Launch]:
    return entropy_grad_launches(*entropy_inputs(*shape, **kw))[2]
