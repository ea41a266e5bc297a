"""Admission control: a bound on chat requests in flight, so overload gets a fast 429."""

from __future__ import annotations


class Admission:
    def __init__(self, limit: int):
        self.limit = limit
        self.in_flight = 0

    def try_acquire(self) -> bool:
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)
