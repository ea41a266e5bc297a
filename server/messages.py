"""The typed records the worker (server/vllm_ext) gives the front end (server/engine), and the
channel's codec. No torch, no vLLM: the controller, the worker and the front end import them.

The channel is one way, worker -> front end, over a ZeroMQ PUSH/PULL pair whose address the
front end puts in additional_config (`keys.TRACE_ADDR_KEY`):
- `TraceRow`: one generated step (`StepRow`) of a request that asked for a trace, with the
  request's tag and choice;
- `RequestEnd`: once per controlled request (traced or not), when the worker drops its
  controller: it finished, was aborted, or failed. It carries the worker's own counters and how
  many rows it sent, so the front end knows when it has every row and never waits on a timer.
`WorkerStats`, the worker's V-Reason state, is not on the channel: the front end pulls it with
vLLM's collective_rpc (start-up, /vreason/stats, /metrics).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

# Error codes of a failed controlled request (RequestEnd.code).
FAILED = "vreason_failed"
"""The controller raised for this request (an OOM, a bug): the request is failed alone."""
NO_SLOT = "vreason_no_slot"
"""The worker had no slot that fits the request (the front end's admission should prevent it)."""



@dataclass(frozen=True)
class StepRow:
    """One generated step of a traced request, as the method defines it (docs/design.md)."""

    t: int
    entropy: float
    ema: float
    alpha: float
    updated: bool
    skipped: bool = False
    entropy_after: float | None = None


@dataclass(frozen=True)
class TraceRow:
    """One step row of a traced request, with the request's identity."""

    tag: str  # the front end's request id
    choice: int
    row: StepRow


@dataclass(frozen=True)
class RequestEnd:
    """The worker's last word on one controlled engine request."""

    tag: str
    choice: int
    rows_sent: int  # StepRows sent for it (0 when untraced)
    steps: int
    updates: int
    skipped_updates: int
    peak_step: int | None
    positions: int
    code: str | None = None  # None: ended normally; FAILED or NO_SLOT
    error: str | None = None


@dataclass(frozen=True)
class WorkerStats:
    """One worker's V-Reason state (/vreason/stats shows every field but `step_seconds`)."""

    available: bool = False
    unavailable: list[str] = field(default_factory=list)  # why V-Reason cannot run here
    adapter: str = ""  # the V-Reason model class serving the architecture (vllm_ext/model.py); "" if none
    kv_layout: dict | None = None  # what the start-up layout probe proved
    active_slots: int = 0
    controller_bytes: int = 0  # slab bytes the active controllers use
    active: dict[str, int] = field(default_factory=dict)  # request id (choice > 0: id/choice) -> its bytes
    slab_bytes: int = 0
    slab_slots: int = 0
    slab_free_slots: int = 0
    slab_max_positions: int = 0
    update_transient_bytes_max: int = 0  # an update step's transients with every slot updating
    tail_transposed_bytes: int = 0
    totals: dict[str, int] = field(default_factory=dict)  # created, freed, failed, updates, ...
    max_overlay_error: float = 0.0  # the self-checks (`checks`: on)
    max_tail_error: float = 0.0
    checks: bool = False
    compilation: str = ""  # how vLLM runs the model
    calls: dict[str, int] = field(default_factory=dict)  # vLLM seams and phases run
    step_seconds: list[float] = field(default_factory=list)  # V-Reason time per step since the last drain

    def to_dict(self) -> dict:
        """As it crosses collective_rpc (plain types)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> WorkerStats:
        return cls(**data)

    def shown(self) -> dict:
        """The fields /vreason/stats shows."""
        out = self.to_dict()
        del out["step_seconds"]
        return out


def encode(rows: list[TraceRow], ends: list[RequestEnd]) -> bytes:
    """One channel message."""
    return json.dumps({"rows": [[r.tag, r.choice, asdict(r.row)] for r in rows],
                       "ends": [asdict(e) for e in ends]}).encode()


def decode(raw: bytes) -> tuple[list[TraceRow], list[RequestEnd]]:
    msg = json.loads(raw)
    rows = [TraceRow(tag, int(choice), StepRow(**r)) for tag, choice, r in msg.get("rows", [])]
    ends = [RequestEnd(**e) for e in msg.get("ends", [])]
    return rows, ends
