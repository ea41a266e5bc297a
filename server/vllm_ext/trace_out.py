"""The worker's side of the trace: step reports on their way to the front end, in step order.

A step's trace values (H_t, the entropy after an apply-now update) stay on the device until a
later step or a request's end reads them, so that a decode step never waits for the device
(controller/step.py). `TraceOut` keeps the step reports not fully sent, finishes them in step
order once their values have arrived, counts each row and sends the rows of traced requests
with the queued `RequestEnd`s on the channel (trace_channel.py).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable

from vreason.server.controller import ControllerState
from vreason.server.controller.step import StepReport
from vreason.server.messages import RequestEnd, TraceRow

from .request import ControlledRequest
from .trace_channel import TracePusher

logger = logging.getLogger("vllm.vreason")


class TraceOut:
    """Reports not fully sent and request ends not sent yet.

    lookup: the live record of a request id (None once it has ended or failed); fail_rows: fail
    the requests of these controller states (reading a report's values failed); totals: the
    runtime's counters (`updates`, `skipped_updates` are counted here, when a row is read).
    `pusher`, the channel's sending end (`send(rows, ends)`), sends nothing until the runner
    gives it the front end's address.
    """

    def __init__(self, lookup: Callable[[str], ControlledRequest | None],
                 fail_rows: Callable[[BaseException, Iterable[ControllerState]], None], totals: Counter):
        self.lookup, self.fail_rows, self.totals = lookup, fail_rows, totals
        self.pusher = TracePusher()
        self.reports: list[tuple[StepReport, set[int]]] = []  # step order; rows not yet sent
        self.ends: list[RequestEnd] = []

    def pending(self) -> list[StepReport]:
        """The reports not finished yet, in step order (an update step finishes them after its sync)."""
        return [r for r, _ in self.reports]

    def add(self, report: StepReport) -> None:
        """Queue a step's report and send what is ready."""
        self.reports.append((report, set(range(len(report.rows)))))
        self.flush()

    def flush(self, ending: ControlledRequest | None = None) -> None:
        """Finish, in step order, the queued reports whose values have reached the host (never
        waiting), then count each row and send the rows of traced requests, in order. A
        request's newest row waits until the request runs its next step or ends: until then
        vLLM may still throw its token away (`settle`). `ending` (a request being ended):
        every report with a row of it is finished now, waiting if need be, and its rows are sent."""
        last = -1
        if ending is not None:
            last = max((k for k, (r, left) in enumerate(self.reports)
                        if any(r.rows[i] is ending.controller and i not in r.dropped for i in left)), default=-1)
        rows: list[TraceRow] = []
        queue, self.reports = self.reports, []
        for k, (report, left) in enumerate(queue):
            if k > last and not report.ready():
                self.reports.extend(queue[k:])  # later reports wait for it: the switch reads H_t in order
                break
            try:
                report.finish()
            except Exception as e:  # noqa: BLE001 - reading the step's values failed: its requests fail
                self.fail_rows(e, [s for s in report.rows if not s.released])
                continue
            for i in sorted(left):
                s, row = report.rows[i], report.step_rows.get(i)
                own = ending is not None and s is ending.controller
                rec = ending if own else self.lookup(s.req_id)
                if row is not None and rec is not None and not s.released and not own and row.t >= s.steps:
                    continue  # its newest: wait for its next step or its end
                left.discard(i)
                if row is None or rec is None or s.released:
                    continue  # failed, dropped or ended: nothing to send
                self.totals["updates"] += int(row.updated)
                self.totals["skipped_updates"] += int(row.skipped)
                if s.params.trace:
                    rows.append(TraceRow(rec.tag, rec.choice, row))
                    rec.rows_sent += 1
            if left:
                self.reports.append((report, left))
        self.send(rows)

    def settle(self, rec: ControlledRequest, newest: StepReport | None) -> None:
        """Before a finished request's RequestEnd: read and send the rest of its rows.

        Under async scheduling vLLM schedules step N+1 before token N is known, so a request
        that stopped at N (an end-of-sequence or stop token, a stop string, an abort) is still in
        step N+1's batch and that token is thrown away. The worker cannot tell at N+1 without a
        host sync (the stop is decided by the scheduler from token N's value), so that step
        runs; the request's finish then arrives while it is still in the persistent batch of
        that last step, and its newest step (`newest`: that step's report, None when its token
        is kept) is taken back: not sent, not counted. (A request stopped by max_tokens or the
        model length is not scheduled again, so it is not there.)"""
        try:
            if newest is not None:
                for i, s in enumerate(newest.rows):
                    if s is rec.controller:
                        newest.drop(i)
            self.flush(rec)
        except Exception:  # noqa: BLE001 - its end still goes out (with the rows sent so far)
            logger.exception("V-Reason: could not settle the trace of request %s", rec.req_id)

    def send(self, rows: list[TraceRow]) -> None:
        """Send `rows` and the queued ends (nothing when both are empty). Never raises."""
        ends, self.ends = self.ends, []
        if rows or ends:
            try:
                self.pusher.send(rows, ends)
            except Exception:  # noqa: BLE001 - the channel must never stop the engine
                logger.exception("V-Reason: could not send on the trace channel")
