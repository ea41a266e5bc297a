"""Helpers shared by the op launchers: backend choice, input checks and the launch record.

Nothing here imports triton, so `vreason.kernels` stays importable on a CPU-only machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

BACKENDS = ("auto", "torch", "triton")


def interpreting() -> bool:
    """True when Triton runs its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(backend: str, device: torch.device) -> bool:
    """Decide between the Triton kernel and the torch reference.

    "auto" picks Triton for CUDA tensors and the reference otherwise; "torch" always picks the
    reference; "triton" picks Triton on CUDA, or on CPU tensors under TRITON_INTERPRET=1.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return False
    if device.type == "cuda":
        return True
    if backend == "triton":
        if interpreting():
            return True
        raise ValueError(
            f"backend='triton' needs CUDA tensors or TRITON_INTERPRET=1; tensors are on {device}"
        )
    return False


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def check_same_device(**tensors: torch.Tensor) -> torch.device:
    devices = {name: t.device for name, t in tensors.items()}
    first = next(iter(devices.values()))
    check(
        all(d == first for d in devices.values()),
        "all tensors must be on one device, got " + ", ".join(f"{n}={d}" for n, d in devices.items()),
    )
    return first


def check_dtype(name: str, t: torch.Tensor, allowed: tuple[torch.dtype, ...]) -> None:
    check(t.dtype in allowed, f"{name} must have dtype in {allowed}, got {t.dtype}")


def check_shape(name: str, t: torch.Tensor, shape: tuple[int | None, ...]) -> None:
    """Check rank and the sizes given (None = any size)."""
    ok = t.dim() == len(shape) and all(s is None or s == n for s, n in zip(shape, t.shape))
    want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
    check(ok, f"{name} must have shape {want}, got {list(t.shape)}")


def signature(*args) -> tuple:
    """What a launcher's checks depend on: each tensor's shape, dtype, device and strides, and the
    other arguments as they are."""
    return tuple((a.shape, a.dtype, a.device, a.stride()) if isinstance(a, torch.Tensor) else a for a in args)


class CheckedOnce:
    """The argument signatures (`signature`) a launcher has checked already. A decode step calls
    each launcher with the same few signatures again and again, so each is checked once, not on
    every call (the checks walk every argument and format their messages)."""

    def __init__(self, limit: int = 4096):
        self.limit, self._seen = limit, set()

    def __contains__(self, key: tuple) -> bool:
        return key in self._seen

    def add(self, key: tuple) -> None:
        if len(self._seen) >= self.limit:  # bounded: row counts and lengths vary over a run
            self._seen.clear()
        self._seen.add(key)


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


@dataclass(frozen=True)
class Launch:
    """One kernel launch exactly as a launcher makes it: the kernel, its grid, its arguments and
    its constexprs plus compile options (num_warps). Running it is `launch()`; `vreason.kernels.aot`
    derives from the same record what Triton compiles for it, so warm-up, the ahead-of-time
    compile test and serving cannot drift apart."""

    kernel: Any  # a @triton.jit function (an InterpretedFunction under TRITON_INTERPRET=1)
    grid: tuple[int, ...]
    args: tuple
    kwargs: dict[str, Any]

    def __call__(self) -> None:
        self.kernel[self.grid](*self.args, **self.kwargs)
