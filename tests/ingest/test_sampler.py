"""Sampling by presentation time, and the monotonic timeline across sessions."""

from __future__ import annotations

import itertools
import math

import pytest

from ingest import FrameSampler
from ingest.timeline import PtsClock


def reference_sample(times: list[float], fps: float) -> list[float]:
    """Independent statement of the rule: the first frame at or after each k / fps."""
    kept: list[float] = []
    k = 0
    for t in times:
        if t + 1e-9 >= k / fps:
            kept.append(t)
            k = math.floor(t * fps + 1e-9) + 1
    return kept


@pytest.mark.parametrize("fps", [0.5, 1.0, 2.0, 3.0, 7.0, 10.0, 25.0])
def test_constant_rate(fps: float) -> None:
    times = [i / 10 for i in range(100)]  # 10 fps; i / 10 is not exact in binary
    sampler = FrameSampler(fps)
    kept = [t for t in times if sampler.accept(t)]
    assert kept == reference_sample(times, fps)


def test_one_fps_of_ten_fps_is_every_tenth_frame() -> None:
    sampler = FrameSampler(1.0)
    times = [i * 0.1 for i in range(1394)]  # accumulates rounding like real timestamps
    kept = [i for i, t in enumerate(times) if sampler.accept(t)]
    assert kept == list(range(0, 1394, 10))


def test_gaps_are_skipped_not_caught_up() -> None:
    sampler = FrameSampler(1.0)
    times = [0.0, 0.05, 0.3, 0.31, 1.2, 2.5, 2.6, 4.0, 4.99, 5.0]
    assert [t for t in times if sampler.accept(t)] == [0.0, 1.2, 2.5, 4.0, 5.0]


def test_none_keeps_everything() -> None:
    sampler = FrameSampler(None)
    assert all(sampler.accept(t) for t in [0.0, 0.0, 0.01, 5.0])


def test_clock_follows_stream_and_starts_at_zero() -> None:
    clock = PtsClock(live=False)
    clock.new_session(0.1)
    assert [round(clock.map(t, 0.0), 6) for t in (3.0, 3.1, 3.2)] == [0.0, 0.1, 0.2]


def test_clock_continues_across_file_sessions() -> None:
    clock = PtsClock(live=False)
    clock.new_session(0.1)
    out = [clock.map(i / 10, 0.0) for i in range(10)]
    clock.new_session(0.1)
    out += [clock.map(i / 10, 0.0) for i in range(10)]
    assert all(b > a for a, b in itertools.pairwise(out))
    assert out[10] == pytest.approx(1.0)


def test_clock_live_reconnect_keeps_wall_gap() -> None:
    clock = PtsClock(live=True)
    clock.new_session(0.1)
    assert clock.map(10.0, 100.0) == 0.0
    assert clock.map(10.5, 100.5) == pytest.approx(0.5)
    clock.new_session(0.1)  # reconnected 7 s later; the new session restarts its timestamps
    assert clock.map(0.2, 107.5) == pytest.approx(7.5)
    assert clock.map(0.3, 107.6) == pytest.approx(7.6)


def test_clock_survives_backwards_and_runaway_timestamps() -> None:
    clock = PtsClock(live=True, max_jump_s=10.0)
    clock.new_session(0.1)
    clock.map(50.0, 0.0)
    clock.map(50.1, 0.1)
    back = clock.map(1.0, 0.2)  # the camera reset its clock
    assert back > 0.1
    ahead = clock.map(1.0 + 3600, 0.3)  # an hour's jump in 0.1 s of wall time
    assert back < ahead < back + 1.0


def test_clock_without_timestamps_uses_the_wall_clock_when_live() -> None:
    clock = PtsClock(live=True)
    clock.new_session(None)
    assert clock.map(None, 10.0) == 0.0
    assert clock.map(None, 11.0) == pytest.approx(1.0)
    assert clock.map(None, 13.5) == pytest.approx(3.5)
