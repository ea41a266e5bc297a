"""[frozen copy of server/controller/state.py at fc1418b for bench/step7b.py] One request's controller: the value offsets dV, Adam moments, the entropy switch and its trace.

Owned by the model runner (vllm_ext) in the worker process, created when the request's prefill
ends and dropped when it finishes or is aborted. Tensors live on the device of the KV cache, in
fp32. Positions are absolute token positions of the request; `runs` lists the controlled
(video) positions as (start, length) pairs in prompt order, and row i of v0/delta is the i-th
controlled position in that order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vreason.server.controller.objective import SwitchState
from vreason.server.controller.params import VReasonParams


@dataclass
class ControllerState:
    req_id: str
    params: VReasonParams
    runs: list[tuple[int, int]]
    v0: torch.Tensor  # [Hkv, P, D] fp32: layer L's cached values at the controlled positions
    delta: torch.Tensor  # [Hkv, P, D] fp32
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    switch: SwitchState
    adam_step: int = 0
    updates: int = 0
    skipped_updates: int = 0
    trace: list[dict] = field(default_factory=list)
    update_failed: bool = False

    @classmethod
    def create(cls, req_id: str, params: VReasonParams, runs: list[tuple[int, int]],
               v0: torch.Tensor) -> ControllerState:
        v0 = v0.detach().float().clone()
        zeros = lambda: torch.zeros_like(v0)  # noqa: E731
        return cls(req_id, params, runs, v0, zeros(), zeros(), zeros(), SwitchState(params.beta))

    @property
    def num_positions(self) -> int:
        return self.v0.shape[1]

    @property
    def has_offset(self) -> bool:
        """True once an update has been applied (before that, Vn == V0 and logits are stock)."""
        return self.updates > 0

    def updates_at_next_step(self) -> bool:
        return (self.switch.t + 1) % self.params.update_every == 0

    def nbytes(self) -> int:
        """Bytes of controller state: V0, dV and the two Adam moments (4 * Hkv * P * D * 4)."""
        return sum(t.numel() * t.element_size() for t in (self.v0, self.delta, self.exp_avg, self.exp_avg_sq))


def state_bytes(num_kv_heads: int, num_positions: int, head_dim: int) -> int:
    """The documented per-request formula: V0 + dV + two Adam moments, fp32."""
    return 4 * num_kv_heads * num_positions * head_dim * 4
