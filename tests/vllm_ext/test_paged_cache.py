"""Controlled-position runs: found in a prompt, and expanded back to positions for the V0 copy."""

from __future__ import annotations

import torch

from vreason.server.vllm_ext.paged_cache import run_positions, token_runs

V = 9  # a visual pad token id


def test_runs_and_their_positions_round_trip():
    prompt = [V, V, 1, 2, V, 3, V, V, V]
    runs = token_runs(prompt, {V})
    assert runs == [(0, 2), (4, 1), (6, 3)]
    positions = run_positions(runs)
    assert positions.dtype == torch.long
    assert positions.tolist() == [i for i, t in enumerate(prompt) if t == V]


def test_no_runs():
    assert token_runs([1, 2, 3], {V}) == []
    assert run_positions([]).shape == (0,) and run_positions([]).dtype == torch.long
