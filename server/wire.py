"""What crosses a process boundary between the front end (server/engine) and vLLM's worker
(server/vllm_ext): the keys and environment names that wire them together, and the typed records
of the V-Reason channel. No torch, no vLLM: both sides import this module, neither imports the other.

The channel is one way, worker -> front end, over a ZeroMQ PUSH/PULL pair:
- `StepRow`: one generated step of a request that asked for a trace;
- `RequestEnd`: once per controlled request (traced or not), when the worker drops its
  controller: it finished, was aborted, or failed. It carries the worker's own counters and how
  many rows it sent, so the front end knows when it has every row and never waits on a timer;
- `WorkerStats`: the worker's V-Reason stats, sent at most every `STATS_EVERY_S` seconds (and
  pulled on demand by /vreason/stats), never attached to a step.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

ARCHITECTURE = "Qwen2_5_VLForConditionalGeneration"
"""The Hugging Face architecture V-Reason serves (the plugin registers its subclass for it)."""

# Environment names, read where each process starts.
TRACE_ADDR_ENV = "VREASON_TRACE_ADDR"
"""ZeroMQ address where workers push channel messages (set by the front end before vLLM starts)."""
CHECK_ENV = "VREASON_CHECK_OVERLAY"
"""Set to 1 to compare the overlay and the tail with vLLM's own outputs while dV == 0 (tests)."""

# SamplingParams.extra_args keys, one request's V-Reason wiring.
EXTRA_ARGS_KEY = "vreason"
"""The request's V-Reason options (`VReasonParams.to_dict()`)."""
REQUEST_TAG_KEY = "vreason_rid"
"""The front end's request id, echoed back on every channel record of that request."""
CHOICE_KEY = "vreason_choice"
"""The choice index of this engine request (the front end submits one engine request per choice)."""

# vLLM additional_config keys, the deployment's V-Reason settings.
SLOTS_KEY = "vreason_slots"
"""Controller slots in the slab: controlled sequences decoded at once."""
POSITIONS_KEY = "vreason_max_positions"
"""Controlled positions (video tokens) per slot."""
TRANSPOSED_KEY = "vreason_transposed_tail"
"""Keep transposed copies of the tail's weights for the input gradient where that pays (CPU, bf16/fp16)."""
DISABLED_KEY = "vreason_disabled"
"""Reasons found before the engine started why V-Reason cannot run (a list; empty or absent: none)."""

STATS_EVERY_S = 1.0

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
    stats: dict


def encode(rows: list[tuple[str, int, StepRow]], ends: list[RequestEnd], stats: WorkerStats | None) -> bytes:
    msg: dict = {"rows": [[tag, choice, asdict(r)] for tag, choice, r in rows],
                 "ends": [asdict(e) for e in ends]}
    if stats is not None:
        msg["stats"] = stats.stats
    return json.dumps(msg).encode()


def decode(raw: bytes) -> tuple[list[tuple[str, int, StepRow]], list[RequestEnd], WorkerStats | None]:
    msg = json.loads(raw)
    rows = [(tag, int(choice), StepRow(**r)) for tag, choice, r in msg.get("rows", [])]
    ends = [RequestEnd(**e) for e in msg.get("ends", [])]
    stats = WorkerStats(msg["stats"]) if "stats" in msg else None
    return rows, ends, stats
