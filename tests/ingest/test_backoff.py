"""Capped, jittered exponential backoff."""

from __future__ import annotations

import random

from ingest import Backoff, BackoffPolicy


def test_grows_exponentially_up_to_the_cap() -> None:
    backoff = Backoff(BackoffPolicy(initial_s=0.5, max_s=8.0, multiplier=2.0, jitter=0.0))
    assert [backoff.next_delay() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert backoff.failures == 7


def test_jitter_stays_within_bounds_and_varies() -> None:
    policy = BackoffPolicy(initial_s=1.0, max_s=4.0, multiplier=2.0, jitter=0.25)
    backoff = Backoff(policy, random.Random(7))
    delays = [backoff.next_delay() for _ in range(200)]
    for n, delay in enumerate(delays):
        cap = min(4.0, 1.0 * 2.0**n)
        assert cap * 0.75 <= delay <= cap
    assert len(set(delays[10:])) > 100  # jittered, not lockstep


def test_never_gives_up_and_never_overflows() -> None:
    backoff = Backoff(BackoffPolicy(initial_s=0.1, max_s=30.0, jitter=0.0))
    for _ in range(5000):
        delay = backoff.next_delay()
    assert delay == 30.0
    assert backoff.ceiling(10**6) == 30.0


def test_reset_starts_over() -> None:
    backoff = Backoff(BackoffPolicy(initial_s=0.5, max_s=8.0, jitter=0.0))
    for _ in range(4):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_seeded_sequences_repeat() -> None:
    policy = BackoffPolicy(jitter=0.5)
    a = Backoff(policy, random.Random(3))
    b = Backoff(policy, random.Random(3))
    assert [a.next_delay() for _ in range(10)] == [b.next_delay() for _ in range(10)]
