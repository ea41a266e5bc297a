"""Front-end side of the V-Reason channel: a ZeroMQ PULL socket fed by vLLM's workers.

Workers push typed records (server/messages.py): a `TraceRow` per step of a traced request and
one `RequestEnd` per controlled engine request. Each record carries our request id (tag) and the
choice index explicitly; the socket's address reaches the workers in vLLM's additional_config.
The workers' stats are pulled over collective_rpc, not sent here. A controlled request is
registered here while it runs; the engine finishes a choice only once that choice's
`RequestEnd` has arrived, so every row the worker sent for it is in (the end says how many). No
row is dropped: a request that is not (or no longer) registered has been aborted by us, and its
records are counted as `orphan_records` (in /vreason/stats).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field

from vreason.server.messages import RequestEnd, StepRow, decode

from .types import TraceSummary

logger = logging.getLogger("vreason.engine")

END_WAIT_S = 120.0
"""Longest wait for a finished choice's RequestEnd before its response says the trace is
incomplete. The end normally follows the last token by one engine step."""


@dataclass
class ChoiceTrace:
    rows: list[StepRow] = field(default_factory=list)
    taken: int = 0
    end: RequestEnd | None = None


class RequestTrace:
    """What the workers have said about one controlled request, per choice."""

    def __init__(self, n: int) -> None:
        self.choices = [ChoiceTrace() for _ in range(n)]
        self.changed = asyncio.Event()

    @property
    def failure(self) -> RequestEnd | None:
        """The first choice whose controller failed (or was refused), if any."""
        return next((c.end for c in self.choices if c.end is not None and c.end.code is not None), None)

    def take(self, index: int, upto: int) -> list[StepRow]:
        """Rows of choice `index` not yet handed out, up to the `upto`-th generated token."""
        c = self.choices[index]
        start, end = c.taken, min(upto, len(c.rows))
        c.taken = max(start, end)
        return c.rows[start:end]

    async def wait_end(self, index: int, alive, timeout: float = END_WAIT_S) -> RequestEnd | None:
        """The RequestEnd of choice `index`; None if it did not come within `timeout` or the engine
        stopped (`alive()` false)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        c = self.choices[index]
        while c.end is None and alive() and loop.time() < deadline:
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(1.0, max(0.0, deadline - loop.time())))
            except TimeoutError:
                pass
        return c.end

    def summary(self, index: int, end: RequestEnd | None) -> TraceSummary:
        c = self.choices[index]
        if end is None:
            return TraceSummary(None, None, None, False, f"the worker's end of trace did not arrive within "
                                f"{END_WAIT_S:g} s, or the engine stopped")
        complete = end.rows_sent == len(c.rows)
        return TraceSummary(end.updates, end.skipped_updates, end.peak_step, complete,
                            None if complete else f"{len(c.rows)} of {end.rows_sent} trace rows arrived",
                            end.positions)


class TraceHub:
    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="vreason-")
        self.address = f"ipc://{os.path.join(self._dir, 'trace.sock')}"
        self._requests: dict[str, RequestTrace] = {}
        self.orphan_records = 0
        self._task: asyncio.Task | None = None
        self._sock = None

    def start(self) -> None:
        """Bind the socket (before the engine starts: the workers connect to `address`)."""
        import zmq
        import zmq.asyncio

        self._sock = zmq.asyncio.Context.instance().socket(zmq.PULL)
        self._sock.bind(self.address)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
        if self._sock is not None:
            self._sock.close(0)

    def register(self, request_id: str, n: int) -> RequestTrace:
        trace = self._requests[request_id] = RequestTrace(n)
        return trace

    def unregister(self, request_id: str) -> None:
        self._requests.pop(request_id, None)

    def receive(self, raw: bytes) -> None:
        """Take one channel message (the socket loop's body; tests call it directly)."""
        rows, ends = decode(raw)
        touched = set()
        for r in rows:
            trace = self._requests.get(r.tag)
            if trace is None or not 0 <= r.choice < len(trace.choices):
                self.orphan_records += 1
                continue
            trace.choices[r.choice].rows.append(r.row)
            touched.add(r.tag)
        for end in ends:
            trace = self._requests.get(end.tag)
            if trace is None or not 0 <= end.choice < len(trace.choices):
                self.orphan_records += 1
                continue
            trace.choices[end.choice].end = end
            touched.add(end.tag)
        for tag in touched:
            self._requests[tag].changed.set()

    async def _run(self) -> None:
        while True:
            try:
                self.receive(await self._sock.recv())
            except asyncio.CancelledError:
                raise
            except Exception:  # a malformed message must not stop the channel
                logger.exception("bad V-Reason channel message")


STEP_KEYS = ("entropy", "ema", "alpha", "updated")


def public_row(row: StepRow) -> dict:
    """A trace row as clients see it; `entropy_after` (entropy of the updated logits) when known."""
    out = {k: _finite(getattr(row, k)) for k in STEP_KEYS}
    if row.entropy_after is not None:
        out["entropy_after"] = _finite(row.entropy_after)
    return out


def _finite(x):
    """JSON has no NaN/inf: a non-finite number (a broken step) is reported as null."""
    return None if isinstance(x, float) and not math.isfinite(x) else x


def trace_object(rows: list[StepRow], summary: TraceSummary | None, steps: bool = True) -> dict:
    """The response's `vreason` object for one choice: the worker's counts and the rows."""
    s = summary or TraceSummary(None, None, None, False, "no end of trace")
    out = {"updates": s.updates, "skipped_updates": s.skipped_updates, "peak_step": s.peak_step,
           "controlled_positions": s.positions, "complete": s.complete}
    if not s.complete:
        out["incomplete_reason"] = s.reason
    if steps:
        out["steps"] = [public_row(r) for r in rows]
    return out

