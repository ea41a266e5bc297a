"""Front-end side of the V-Reason trace channel: a ZeroMQ PULL socket fed by vLLM's workers.

Workers push, after each step, the trace rows of requests that asked for a trace (tagged with
our request id and vLLM's internal id, whose `{i}_` prefix names the choice when n > 1) and
their running stats. Rows are kept per request until it ends; the latest stats are kept for
/metrics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import tempfile
from collections import defaultdict

from vreason.server.controller.params import TRACE_ADDR_ENV

logger = logging.getLogger("vreason.engine")
_CHILD = re.compile(r"^(\d+)_")


class RequestTrace:
    def __init__(self, n: int) -> None:
        self.rows: dict[int, list[dict]] = defaultdict(list)
        self.sent: dict[int, int] = defaultdict(int)
        self.n = n
        self.changed = asyncio.Event()

    def take(self, index: int, upto: int) -> list[dict]:
        """Rows of choice `index` not yet handed out, up to the `upto`-th generated token."""
        start, end = self.sent[index], min(upto, len(self.rows[index]))
        self.sent[index] = max(start, end)
        return self.rows[index][start:end]

    async def wait_for(self, index: int, count: int, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.rows[index]) < count and loop.time() < deadline:
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), deadline - loop.time())
            except TimeoutError:
                break


class TraceHub:
    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="vreason-")
        self.address = f"ipc://{os.path.join(self._dir, 'trace.sock')}"
        self._requests: dict[str, RequestTrace] = {}
        self.stats: dict = {}
        self.step_seconds: list[float] = []  # drained by the metrics collector
        self._task: asyncio.Task | None = None
        self._sock = None

    def start(self) -> None:
        import zmq
        import zmq.asyncio

        self._sock = zmq.asyncio.Context.instance().socket(zmq.PULL)
        self._sock.bind(self.address)
        os.environ[TRACE_ADDR_ENV] = self.address  # inherited by vLLM's engine processes
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

    async def _run(self) -> None:
        while True:
            try:
                msg = json.loads(await self._sock.recv())
            except asyncio.CancelledError:
                raise
            except Exception:  # a malformed message must not stop the channel
                logger.exception("bad trace message")
                continue
            self.stats = msg.get("stats", {})
            if "step_seconds" in self.stats and len(self.step_seconds) < 100_000:
                self.step_seconds.append(self.stats["step_seconds"])
            touched = set()
            for tag, internal_id, _t, row in msg.get("rows", []):
                trace = self._requests.get(tag)
                if trace is None:
                    continue
                m = _CHILD.match(internal_id) if trace.n > 1 else None
                trace.rows[int(m.group(1)) if m else 0].append(row)
                touched.add(tag)
            for tag in touched:
                self._requests[tag].changed.set()


STEP_KEYS = ("entropy", "ema", "alpha", "updated")


def public_row(row: dict) -> dict:
    """A trace row as clients see it; `entropy_after` (entropy of the updated logits) when known."""
    out = {k: _finite(row[k]) for k in STEP_KEYS}
    if "entropy_after" in row:
        out["entropy_after"] = _finite(row["entropy_after"])
    return out


def _finite(x):
    """JSON has no NaN/inf: a non-finite number (a broken step) is reported as null."""
    return None if isinstance(x, float) and not math.isfinite(x) else x


def summarize(rows: list[dict]) -> dict:
    """The response's `vreason` object for one choice, from its per-token rows."""
    peak, peak_step = 0.0, None
    for t, row in enumerate(rows, start=1):
        if row["ema"] > peak:
            peak, peak_step = row["ema"], t
    return {
        "updates": sum(1 for r in rows if r.get("updated")),
        "skipped_updates": sum(1 for r in rows if r.get("skipped")),
        "peak_step": peak_step,
        "steps": [public_row(r) for r in rows],
    }
