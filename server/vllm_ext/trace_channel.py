"""Worker side of the V-Reason channel: push typed records (server/messages.py) to the front end.

The front end binds a ZeroMQ PULL socket before the engine starts and puts its address in
vLLM's additional_config (`TRACE_ADDR_KEY`), which reaches every worker. Without an address
nothing is sent.
"""

from __future__ import annotations

from vreason.server.messages import RequestEnd, TraceRow, encode


class TracePusher:
    """The sending end; connects on the first send."""

    def __init__(self, addr: str | None = None) -> None:
        self._addr = addr
        self._sock = None

    def send(self, rows: list[TraceRow], ends: list[RequestEnd]) -> None:
        if not self._addr:
            return
        if self._sock is None:
            import zmq

            self._sock = zmq.Context.instance().socket(zmq.PUSH)
            # PUSH blocks (never drops) when the front end is slow: back-pressure, not loss.
            self._sock.setsockopt(zmq.LINGER, 1000)
            self._sock.connect(self._addr)
        self._sock.send(encode(rows, ends))
