"""Kernel-test setup: Triton's CPU interpreter without CUDA, NaN-poisoned outputs, gpu skips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    # read when a kernel module is decorated (first lazy import), so set before any test runs
    os.environ["TRITON_INTERPRET"] = "1"

DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if not HAS_CUDA and "gpu" in item.keywords and _HERE in Path(item.fspath).parents:
            item.add_marker(skip)


@pytest.fixture
def device() -> torch.device:
    return DEVICE


@pytest.fixture
def poison_empty(monkeypatch):
    """Make torch.empty / empty_like return NaN-filled float tensors, to catch partial writes."""
    empty, empty_like = torch.empty, torch.empty_like

    def poisoned(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poisoned(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poisoned(empty_like(*a, **k)))


@pytest.fixture
def assert_close():
    """assert_close(name, ref, out, tol): no NaN, and ||out - ref|| / ||ref|| < tol."""

    def check(name: str, ref: torch.Tensor, out: torch.Tensor, tol: float) -> None:
        assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
        ref, out = ref.double().cpu(), out.double().cpu()
        assert not out.isnan().any(), f"{name}: NaN at {out.isnan().nonzero()[:5].tolist()}"
        diff = (out - ref).abs()
        ratio = (diff.norm() / ref.norm().clamp_min(1e-30)).item()
        assert ratio < tol, f"{name}: rel err {ratio:.3g} >= {tol:g}, max abs diff {diff.max().item():.3g}"

    return check
