"""The V-Reason channel's front end: typed records in, one trace per choice, orphans counted."""

from __future__ import annotations

from vreason.server.engine.traces import TraceHub
from vreason.server.messages import RequestEnd, StepRow, TraceRow, WorkerStats, decode, encode


def test_records_round_trip_and_reach_their_choice():
    rows = [TraceRow("r", 1, StepRow(1, 2.0, 2.0, 1.0, False)), TraceRow("gone", 0, StepRow(1, 1.0, 1.0, 1.0, True))]
    ends = [RequestEnd("r", 1, 1, 1, 0, 0, None, 4)]
    assert decode(encode(rows, ends)) == (rows, ends)
    hub = TraceHub()
    trace = hub.register("r", 2)
    hub.receive(encode(rows, ends))
    assert trace.choices[1].rows == [rows[0].row] and trace.choices[1].end == ends[0]
    assert trace.choices[0].rows == [] and hub.orphan_records == 1


def test_worker_stats_cross_as_plain_types_and_show_all_but_step_seconds():
    stats = WorkerStats(available=True, totals={"created": 2}, step_seconds=[0.5])
    assert WorkerStats.from_dict(stats.to_dict()) == stats
    assert "step_seconds" not in stats.shown() and stats.shown()["totals"] == {"created": 2}
