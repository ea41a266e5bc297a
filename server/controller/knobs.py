"""Test-only V-Reason knobs, outside the production types.

Reachable only on a server started with `--enable-test-knobs`: the API then reads a request's
`vreason` object as `KnobbedParams` (else these names are unknown options, HTTP 400), and the
worker, told by additional_config, reads the request's options the same way and passes
`TEST_HOOKS` to `controller_step`. Without the flag this module is never imported and the
decode loop runs no knob check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .params import ParamError, VReasonParams

if TYPE_CHECKING:
    from .state import ControllerState


class InjectedFailure(RuntimeError):
    """Raised by the knob `fail_at_step`."""


@dataclass(frozen=True)
class KnobbedParams(VReasonParams):
    """`VReasonParams` plus the test-only knobs."""

    force_alpha: float | None = None
    """Use this alpha at every step instead of the switching rule."""
    nan_at_step: int | None = None
    """Poison the loss with NaN at this generated step (the update must be skipped)."""
    fail_at_step: int | None = None
    """Raise inside this request's update at this generated step (a multiple of update_every), as
    an out-of-memory error would: the request must fail alone."""

    def __post_init__(self) -> None:
        super().__post_init__()

        def bad(name: str, why: str) -> ParamError:
            return ParamError(f"vreason.{name} {why}", f"vreason.{name}")

        if self.force_alpha is not None and (
            isinstance(self.force_alpha, bool) or self.force_alpha not in (-1, 1, -1.0, 1.0)
        ):
            raise bad("force_alpha", "must be -1 or 1")
        if self.nan_at_step is not None and (isinstance(self.nan_at_step, bool)
                                             or not isinstance(self.nan_at_step, int)):
            raise bad("nan_at_step", "must be an integer")
        if self.fail_at_step is not None and (isinstance(self.fail_at_step, bool)
                                              or not isinstance(self.fail_at_step, int)
                                              or self.fail_at_step < 1
                                              or self.fail_at_step % self.update_every != 0):
            raise bad("fail_at_step", "must be a positive multiple of update_every (an update step)")


class KnobHooks:
    """What the controller step asks of the knobs (`controller_step(..., hooks=TEST_HOOKS)`); a
    request whose options are plain `VReasonParams` is left alone."""

    @staticmethod
    def alpha(s: ControllerState, alpha: float) -> float:
        """The alpha of this step: `force_alpha` if set."""
        forced = getattr(s.params, "force_alpha", None)
        return float(forced) if forced is not None else alpha

    @staticmethod
    def before_update(s: ControllerState) -> None:
        """Raise `InjectedFailure` at the step `fail_at_step`."""
        if getattr(s.params, "fail_at_step", None) == s.steps:
            raise InjectedFailure(f"injected controller failure at step {s.steps} (fail_at_step)")

    @staticmethod
    def poisoned(s: ControllerState) -> bool:
        """Whether this step's loss is NaN by `nan_at_step`."""
        return getattr(s.params, "nan_at_step", None) == s.steps


TEST_HOOKS = KnobHooks()
