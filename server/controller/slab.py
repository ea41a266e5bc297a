"""Controller memory preallocated once: one slot per controlled request, up to P_max positions.

Layout [slot, position, KV head, D], so the first P positions of a slot are one contiguous
[P * Hkv, D] block. A request with many controlled values is updated in place on that block
(no copies); requests with few (`GATHER_MAX_VALUES`) are gathered and updated in one fused call,
where the per-call work of one request at a time would cost more than the copies.
V0, dV and the two Adam moments are fp32; `vn` caches the current controlled values in the KV
cache's dtype, which is what layer L's attention reads.
"""

from __future__ import annotations

import torch

GATHER_MAX_VALUES = 1 << 16
"""Requests with at most this many controlled values (P * Hkv * D) update together in an update
step: their rows are gathered from their slots, updated by one fused call and written back
(controller/step.py). Above it a request updates in place in its slot: the copies (about ten
passes over its fp32 state) would cost more than the ~75 small ops of a row of its own."""


class ControllerSlab:
    """Fixed tensors sized at start-up; slots are handed out and returned, never reallocated."""

    def __init__(self, slots: int, max_positions: int, num_kv_heads: int, head_dim: int,
                 cache_dtype: torch.dtype, device: torch.device | str):
        shape = (slots, max_positions, num_kv_heads, head_dim)
        zeros = lambda dtype: torch.zeros(shape, dtype=dtype, device=device)  # noqa: E731
        self.v0, self.delta, self.exp_avg, self.exp_avg_sq = (zeros(torch.float32) for _ in range(4))
        self.vn = zeros(cache_dtype)
        self.max_positions = max_positions
        self._free = list(range(slots - 1, -1, -1))

    @property
    def slots(self) -> int:
        return self.v0.shape[0]

    def free_slots(self) -> int:
        return len(self._free)

    def acquire(self, num_positions: int) -> int | None:
        """Take a slot for a request with `num_positions` controlled positions; None if none fits."""
        if not self._free or num_positions > self.max_positions:
            return None
        return self._free.pop()

    def load(self, slot: int, v0: torch.Tensor) -> None:
        """Start a slot from the request's cached values v0 [P, Hkv, D] (dV and moments zero)."""
        p = v0.shape[0]
        self.v0[slot, :p] = v0
        self.vn[slot, :p] = v0
        for t in (self.delta, self.exp_avg, self.exp_avg_sq):
            t[slot, :p].zero_()

    def release(self, slot: int) -> None:
        self._free.append(slot)

    def rows(self, slot: int, p: int) -> tuple[torch.Tensor, ...]:
        """(v0, delta, exp_avg, exp_avg_sq) of a slot as contiguous [P * Hkv, D] views."""
        ts = (self.v0, self.delta, self.exp_avg, self.exp_avg_sq)
        return tuple(t[slot, :p].view(-1, t.shape[-1]) for t in ts)

    def nbytes(self) -> int:
        ts = (self.v0, self.delta, self.exp_avg, self.exp_avg_sq, self.vn)
        return sum(t.numel() * t.element_size() for t in ts)

    def bytes_per_slot(self) -> int:
        return self.nbytes() // max(1, self.slots)

    def update_transient_bytes(self, rows: int, num_heads: int, hidden: int, intermediate: int, vocab: int) -> int:
        """Upper estimate of what an update step allocates beyond the slab when `rows` update.

        Per updating row: the attention weights at the controlled positions [Hq, P], the value
        gradient [P, Hkv, D] and the apply-now copy of o (fp32), the tail's activations
        (hidden and 2x intermediate) and two vocabulary-sized rows (entropy gradient, logits);
        once per step: one in-place row's Adam outputs and Vn difference (4 x [P, Hkv, D] fp32);
        and per gathered row (at most GATHER_MAX_VALUES values) its gathered state, gradient,
        outputs and padded change (10 x its values, fp32). The formula's one home; derived from
        the code, not measured.
        """
        p, hkv, d = self.max_positions, self.v0.shape[2], self.v0.shape[3]
        values = p * hkv * d
        per_row = 4 * (num_heads * p + values + num_heads * d + 3 * hidden + 2 * intermediate + 2 * vocab)
        gathered = 4 * 10 * values if values <= GATHER_MAX_VALUES else 0
        return rows * (per_row + gathered) + 4 * 4 * values
