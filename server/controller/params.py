"""Per-request V-Reason knobs: one frozen dataclass, validated once, carried as primitives.

The API layer builds `VReasonParams` from the request's `vreason` object (merged over the
server defaults); the engine flattens it into `SamplingParams.extra_args["vreason"]` (a plain
dict, so it crosses vLLM's process boundaries); the worker rebuilds it with `from_dict`.
No torch, no vLLM here. The test-only knobs are a subclass in knobs.py.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

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

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: VReasonParams | None = None) -> VReasonParams:
        """Overlay `data` on `base` (or the defaults) as a `cls`; keys that are not fields of
        `cls` raise ParamError (the test-only knobs are fields of `knobs.KnobbedParams` only)."""
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            raise ParamError(f"unknown vreason option(s): {', '.join(unknown)}", f"vreason.{unknown[0]}")
        return cls(**{**(base or cls()).to_dict(), **data})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
