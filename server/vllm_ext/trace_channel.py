"""Worker side of the trace channel: push per-step trace rows and stats to the front end.

The front end binds a ZeroMQ PULL socket and exports its address in VREASON_TRACE_ADDR before
the engine starts; vLLM's worker processes inherit it. Without that variable nothing is sent.
Messages are JSON: {"rows": [[tag, internal_req_id, t, row_dict], ...], "stats": {...}}.
"""

from __future__ import annotations

import json
import os

from vreason.server.controller.params import TRACE_ADDR_ENV


class TracePusher:
    def __init__(self) -> None:
        self._addr = os.environ.get(TRACE_ADDR_ENV)
        self._sock = None

    def send(self, rows: list, stats: dict) -> None:
        if not self._addr:
            return
        if self._sock is None:
            import zmq

            self._sock = zmq.Context.instance().socket(zmq.PUSH)
            self._sock.setsockopt(zmq.LINGER, 1000)
            self._sock.connect(self._addr)
        self._sock.send(json.dumps({"rows": rows, "stats": stats}).encode())
