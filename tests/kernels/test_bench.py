"""bench/kernels.py: --help and the no-CUDA exit work on CPU; the inner step runs at tiny sizes."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "kernels.py"


@pytest.fixture
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("vreason_bench_kernels", BENCH)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_help(bench, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--help"])
    assert exit_info.value.code == 0 and "--batch" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA exit")
def test_script_without_cuda_exits_0():
    result = subprocess.run([sys.executable, str(BENCH)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "needs a CUDA device" in result.stdout


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_inner_step_tiny(bench, backend, device, monkeypatch):
    """The step's plumbing (shapes, autograd through the tail, in-place update) at toy sizes."""
    for name, value in dict(HIDDEN=64, N_HEADS=4, N_KV=2, HEAD_DIM=16, VOCAB=300, INTER=96).items():
        monkeypatch.setattr(bench, name, value)
    monkeypatch.setattr(bench, "DEVICE", str(device))
    torch.manual_seed(0)
    R = 2
    attn = bench.attention_inputs(R, 100, 40)
    upd = bench.update_inputs(R, 40)
    delta0 = upd[0].clone()
    residual = torch.randn(R, 64, device=device, dtype=torch.bfloat16)
    bench.inner_step(backend, attn, upd, bench.Tail(), residual, torch.ones(R, device=device))
    assert upd[0].isfinite().all() and not torch.equal(upd[0], delta0)
