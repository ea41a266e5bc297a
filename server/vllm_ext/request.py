"""One controlled request in the worker, from the step that first sees it to its `RequestEnd`.

The runtime (runtime.py) keeps one `ControlledRequest` per engine request that asked for
V-Reason and still runs controlled. Its path through the worker, in one record:
- read from `SamplingParams.extra_args` (`from_extra_args`: the options, the front end's tag and
  the choice index) the first time a step schedules it;
- given a controller (`controller`, its slab slot and counters) by the forward that ends its
  prefill;
- each traced step's `StepRow` goes out with its tag and choice (`rows_sent` counts them);
- dropped when vLLM reports it finished, or when its controller fails: its `end` is the last
  record the front end gets for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from vreason.server.controller import ControllerState, VReasonParams
from vreason.server.keys import CHOICE_KEY, EXTRA_ARGS_KEY, REQUEST_TAG_KEY
from vreason.server.messages import RequestEnd


@dataclass(eq=False)
class ControlledRequest:
    """A request that asked for V-Reason, as the worker tracks it."""

    req_id: str
    """vLLM's request id."""
    tag: str
    """The front end's request id, echoed on every channel record of this request."""
    choice: int
    """The choice index of this engine request (the front end submits one per choice)."""
    params: VReasonParams
    controller: ControllerState | None = None
    """Its controller, from the forward that ends its prefill (None before)."""
    rows_sent: int = 0
    """Trace rows sent for it."""

    @classmethod
    def from_extra_args(cls, req_id: str, extra: dict) -> ControlledRequest | None:
        """The record for a request's extra_args (None: it did not ask for V-Reason). Its options
        are the defaults here; `from_dict(extra[EXTRA_ARGS_KEY])` gives the real ones (the caller contains the error of an unreadable set, ending the request by its tag)."""
        if extra.get(EXTRA_ARGS_KEY) is None:
            return None
        return cls(req_id, str(extra.get(REQUEST_TAG_KEY, req_id)), int(extra.get(CHOICE_KEY, 0)), VReasonParams())

    def end(self, code: str | None = None, error: str | None = None) -> RequestEnd:
        """Its last record: the controller's counters (zeros when it never had one)."""
        s = self.controller
        if s is None:
            return RequestEnd(self.tag, self.choice, 0, 0, 0, 0, None, 0, code, error)
        return RequestEnd(self.tag, self.choice, self.rows_sent, s.switch.t, s.updates, s.skipped_updates,
                          s.switch.peak_step, s.num_positions, code, error)
