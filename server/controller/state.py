"""One request's controller: its slab slot, the entropy switch, Adam's step count and its trace.

Owned by the model runner (vllm_ext) in the worker process, created when the request's prefill
ends and dropped when it finishes or is aborted. The tensors (V0, dV, Adam moments in fp32 and
the current controlled values Vn in the cache dtype) live in the runner's ControllerSlab; this
record holds host-side scalars only, and the last step's trace row (`last_row`, made once by
the step's report). `steps` counts the controller steps run (the update schedule follows it
at once); `switch.t` counts the entropies the switch has consumed, which lags while a step's
values are on their way to the host (step.py). Positions are absolute token positions of the
request; `runs` lists the controlled (video) positions as (start, length) pairs in prompt
order, and row i of the slot is the i-th controlled position in that order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vreason.server.messages import StepRow

from .objective import SwitchState
from .params import VReasonParams
from .slab import ControllerSlab


@dataclass
class ControllerState:
    req_id: str
    params: VReasonParams
    runs: list[tuple[int, int]]
    slab: ControllerSlab
    slot: int
    num_positions: int
    switch: SwitchState
    steps: int = 0  # controller steps run (t of the newest step)
    adam_step: int = 0
    updates: int = 0
    skipped_updates: int = 0
    last_row: StepRow | None = None
    loaded: bool = False  # V0 copied into the slot (done inside the forward that ends the prefill)
    released: bool = False  # its slot is back in the slab (finished or failed): nothing more is sent

    @classmethod
    def create(cls, req_id: str, params: VReasonParams, runs: list[tuple[int, int]],
               slab: ControllerSlab) -> ControllerState | None:
        """A new controller in a free slab slot, or None when no slot fits the request."""
        p = sum(n for _, n in runs)
        slot = slab.acquire(p)
        if slot is None:
            return None
        return cls(req_id, params, runs, slab, slot, p, SwitchState(params.beta))

    def load(self, v0: torch.Tensor) -> None:
        """v0: [Hkv, P, D] layer L's cached values at the controlled positions."""
        self.slab.load(self.slot, v0.transpose(0, 1))
        self.loaded = True

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.slab.release(self.slot)

    def _view(self, t: torch.Tensor) -> torch.Tensor:
        return t[self.slot, :self.num_positions].transpose(0, 1)

    @property
    def v0(self) -> torch.Tensor:
        """[Hkv, P, D] fp32 view into the slab."""
        return self._view(self.slab.v0)

    @property
    def delta(self) -> torch.Tensor:
        return self._view(self.slab.delta)

    @property
    def vn(self) -> torch.Tensor:
        """[Hkv, P, D] current controlled values in the cache dtype."""
        return self._view(self.slab.vn)

    @property
    def has_offset(self) -> bool:
        """True once an update has been applied (before that, Vn == V0 and logits are stock)."""
        return self.updates > 0

    def updates_at_next_step(self) -> bool:
        """Whether the next step updates. Never with no controlled positions (a request without a
        video under targets "video", say): it is decoded and traced as usual, with no updates."""
        return self.num_positions > 0 and (self.steps + 1) % self.params.update_every == 0

    def nbytes(self) -> int:
        """Bytes of slab this request uses: V0, dV, two Adam moments (fp32) and Vn (cache dtype)."""
        h, d = self.slab.v0.shape[2:]
        return state_bytes(h, self.num_positions, d, self.slab.vn.element_size())


def state_bytes(num_kv_heads: int, num_positions: int, head_dim: int, cache_itemsize: int = 4) -> int:
    """The documented per-request formula: V0 + dV + two Adam moments in fp32, plus Vn."""
    return (4 * 4 + cache_itemsize) * num_kv_heads * num_positions * head_dim
