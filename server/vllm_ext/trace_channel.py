"""Worker side of the V-Reason channel: push typed records (server/wire.py) to the front end.

The front end binds a ZeroMQ PULL socket and exports its address in VREASON_TRACE_ADDR before
the engine starts; vLLM's worker processes inherit it. Without that variable nothing is sent.
"""

from __future__ import annotations

import os

from vreason.server.wire import TRACE_ADDR_ENV, RequestEnd, StepRow, WorkerStats, encode


class TracePusher:
    def __init__(self) -> None:
        self._addr = os.environ.get(TRACE_ADDR_ENV)
        self._sock = None

    def send(self, rows: list[tuple[str, int, StepRow]], ends: list[RequestEnd], stats: WorkerStats | None) -> None:
        if not self._addr:
            return
        if self._sock is None:
            import zmq

            self._sock = zmq.Context.instance().socket(zmq.PUSH)
            # PUSH blocks (never drops) when the front end is slow: back-pressure, not loss.
            self._sock.setsockopt(zmq.LINGER, 1000)
            self._sock.connect(self._addr)
        self._sock.send(encode(rows, ends, stats))
