"""A launcher checks its arguments once per signature (shapes, dtypes, devices, strides), not on
every decode step; a new signature is checked again, and a bad one still raises."""

from __future__ import annotations

import importlib

import pytest
import torch


def test_checked_once_per_signature(monkeypatch):
    module = importlib.import_module("vreason.kernels.entropy_grad")
    seen = []
    check = module._check
    monkeypatch.setattr(module, "_check", lambda *a: (seen.append(a[0].shape), check(*a)))
    monkeypatch.setattr(module, "_CHECKED", type(module._CHECKED)())
    for _ in range(3):
        module.entropy_grad(torch.zeros(2, 5), torch.ones(2), backend="torch")
    module.entropy_grad(torch.zeros(3, 5), torch.ones(3), backend="torch")
    assert seen == [torch.Size([2, 5]), torch.Size([3, 5])]
    with pytest.raises(ValueError, match="alpha must have shape"):
        module.entropy_grad(torch.zeros(3, 5), torch.ones(2), backend="torch")
