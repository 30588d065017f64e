"""The reconnection delay sequence: capped exponential growth with random jitter."""

from __future__ import annotations

import random

from ingest.options import BackoffPolicy


class Backoff:
    """Yields the delay before each reconnection attempt; never runs out.

    ``next_delay()`` after n consecutive failures returns a value in
    ``[cap_n * (1 - jitter), cap_n]`` with ``cap_n = min(max_s, initial_s * multiplier**n)``.
    ``reset()`` starts over (after a session proved stable). Pass a seeded ``random.Random`` for
    reproducible sequences.
    """

    def __init__(self, policy: BackoffPolicy, rng: random.Random | None = None) -> None:
        self._policy = policy
        self._rng = rng or random.Random()
        self._failures = 0

    @property
    def failures(self) -> int:
        """Consecutive failures since the last reset."""
        return self._failures

    def ceiling(self, failures: int) -> float:
        """The un-jittered delay after ``failures`` consecutive failures."""
        p = self._policy
        delay = p.initial_s
        for _ in range(failures):
            delay *= p.multiplier
            if delay >= p.max_s:
                return p.max_s
        return min(delay, p.max_s)

    def next_delay(self) -> float:
        cap = self.ceiling(self._failures)
        self._failures += 1
        return cap * (1.0 - self._policy.jitter * self._rng.random())

    def reset(self) -> None:
        self._failures = 0
