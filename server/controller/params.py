"""Per-request V-Reason knobs: one frozen dataclass, validated once, carried as primitives.

The API layer builds `VReasonParams` from the request's `vreason` object (merged over the
server defaults); the engine flattens it into `SamplingParams.extra_args["vreason"]` (a plain
dict, so it crosses vLLM's process boundaries); the worker rebuilds it with `from_dict`.
No torch, no vLLM here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar

from vreason.server.errors import ClientError

NORM_RESTORE = ("token", "none")
APPLY = ("now", "next")
TARGETS = ("video", "image", "visual", "text")


class ParamError(ClientError, ValueError):
    """A bad V-Reason option (HTTP 400); `param` names the field. Also a ValueError, for callers
    outside HTTP (the CLI's defaults)."""

    def __init__(self, message: str, param: str):
        super().__init__(message, param=param, code="invalid_vreason_option")


@dataclass(frozen=True)
class VReasonParams:
    enabled: bool = True
    """Run the controller for this request."""
    lr: float = 1e-2
    """Adam learning rate on the value offsets."""
    steps: int = 1
    """Adam steps per update."""
    update_every: int = 2
    """Run an update every this many generated tokens (t % update_every == 0)."""
    beta: float = 0.98
    """EMA factor of the entropy trace."""
    norm_restore: str = "token"
    """"token": keep each position's value norm per KV head; "none": raw V0 + dV."""
    apply: str = "now"
    """"now": the token at an update step is sampled from the updated logits; "next": from the next."""
    targets: str = "video"
    """Which positions are controlled: video tokens, image tokens, both ("visual"), or every prompt
    token that is not visual ("text": an extension of the method, which controls visual tokens only)."""
    trace: bool = False
    """Return the per-token entropy/EMA/alpha trace in the response."""
    force_alpha: float | None = None
    """Test-only: use this alpha at every step instead of the switching rule."""
    nan_at_step: int | None = None
    """Test-only: poison the loss with NaN at this generated step (the update must be skipped)."""
    fail_at_step: int | None = None
    """Test-only: raise inside this request's update at this generated step (a multiple of
    update_every), as an out-of-memory error would: the request must fail alone."""

    TEST_KNOBS: ClassVar[tuple[str, ...]] = ("force_alpha", "nan_at_step", "fail_at_step")
    """Accepted from a client only when the server runs with --enable-test-knobs."""

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ParamError:
            return ParamError(f"vreason.{name} {why}", f"vreason.{name}")

        for name in ("enabled", "trace"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "must be a boolean")
        for name in ("steps", "update_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise bad(name, "must be an integer")
        for name in ("lr", "beta"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise bad(name, "must be a finite number")
        if not 0.0 < self.lr <= 10.0:
            raise bad("lr", "must be in (0, 10]")
        if not 1 <= self.steps <= 16:
            raise bad("steps", "must be between 1 and 16")
        if not 1 <= self.update_every <= 4096:
            raise bad("update_every", "must be between 1 and 4096")
        if not 0.0 <= self.beta < 1.0:
            raise bad("beta", "must be in [0, 1)")
        for name, allowed in (("norm_restore", NORM_RESTORE), ("apply", APPLY), ("targets", TARGETS)):
            if getattr(self, name) not in allowed:
                raise bad(name, f"must be one of {', '.join(map(repr, allowed))}")
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

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: VReasonParams | None = None, *,
                  test_knobs: bool = True) -> VReasonParams:
        """Overlay `data` on `base` (or the defaults); unknown keys raise ParamError, and so do the
        test-only knobs unless `test_knobs` (the API layer passes the server's setting)."""
        known = set(cls.field_names()) - (set() if test_knobs else set(cls.TEST_KNOBS))
        unknown = sorted(set(data) - known)
        if unknown:
            raise ParamError(f"unknown vreason option(s): {', '.join(unknown)}", f"vreason.{unknown[0]}")
        return replace(base or cls(), **data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
