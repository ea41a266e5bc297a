"""Admission control: a bound on chat requests in flight, so overload gets a fast 429."""

from __future__ import annotations


class Admission:
    def __init__(self, limit: int):
        self.limit = limit
        self.in_flight = 0

    def try_acquire(self, n: int = 1) -> bool:
        """Take `n` places (a batch request takes one per conversation), all or none."""
        if self.in_flight + n > self.limit:
            return False
        self.in_flight += n
        return True

    def release(self, n: int = 1) -> None:
        self.in_flight = max(0, self.in_flight - n)
