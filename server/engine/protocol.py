"""The engine protocol the HTTP layer depends on (a fake implements it in API tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from .types import ChoiceDelta, GenerateRequest, Usage


class EngineClient(Protocol):
    model_name: str
    max_model_len: int

    def is_ready(self) -> bool:
        """True only while the engine can serve requests."""

    async def generate(self, request: GenerateRequest, usage: Usage) -> AsyncIterator[ChoiceDelta]:
        """Yield deltas until every choice finished; fills `usage` as counts become known.

        Raises EngineClientError for client faults found before generation starts (bad video,
        prompt too long), EngineUnavailable when the engine cannot serve.
        """

    async def abort(self, request_id: str) -> None:
        """Stop a request (client went away); frees its V-Reason controller."""

    async def stats(self) -> dict:
        """Engine-side V-Reason stats (active controller slots, bytes, totals)."""

    async def metrics_snapshot(self) -> dict:
        """Numbers for /metrics: num_running, num_waiting, kv_cache_usage (0..1) and the worker's
        `WorkerStats` ("vreason", None when unknown) with its inner-step durations since the last
        call (`step_seconds`)."""
