"""The answer records shared from the memory to the wire: ranking, timings from receipt,
pickling (the engine may move to another process)."""

from __future__ import annotations

import math
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_agent.answers import (
    AnswerDelta,
    AnswerFailed,
    AnswerFinal,
    AnswerTimings,
    Moment,
    best_first,
)


def _moment(seq: int, score: float, relevance: float | None) -> Moment:
    return Moment("dock", seq, seq + 1, 100 + seq, 101 + seq, score, relevance, False, seq)


def test_moments_are_ranked_best_first() -> None:
    ranked = best_first(
        [
            _moment(0, 0.5, 0.9),
            _moment(1, 1.0, None),
            _moment(2, 0.5, 0.2),
            _moment(3, 1.0, None),
            _moment(4, 0.5, math.nan),
        ]
    )
    # by score, then relevance (missing or NaN counts as 0), then newest first
    assert [m.start_pts for m in ranked] == [3, 1, 0, 2, 4]
    assert ranked[0].camera == "dock" and ranked[0].end_wall == 104 and ranked[0].score == 1.0


_seconds = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)


@given(ttft=_seconds, after=_seconds, wait=st.floats(-10.0, 1e6, allow_nan=False))
def test_timings_after_the_wait_count_from_receipt(ttft: float, after: float, wait: float) -> None:
    """What docs/protocol.md promises: queue <= ttft <= total, and only the wait is added."""
    worker = AnswerTimings(
        ttft_s=ttft, tokens_per_s=3.0, total_s=ttft + after, retrieval_s=ttft / 2, disk_reads=2
    )
    delivered = worker.after_wait(wait)
    assert delivered.queue_s == max(0.0, wait)
    assert delivered.ttft_s is not None
    assert delivered.queue_s <= delivered.ttft_s <= delivered.total_s
    assert delivered.total_s == pytest.approx(worker.total_s + delivered.queue_s)
    assert (delivered.tokens_per_s, delivered.retrieval_s, delivered.disk_reads) == (
        3.0,
        ttft / 2,
        2,
    )
    silent = AnswerTimings(ttft_s=None, tokens_per_s=None, total_s=after).after_wait(wait)
    assert silent.ttft_s is None and silent.queue_s <= silent.total_s


def test_records_pickle_and_token_ids_match_the_count() -> None:
    final = AnswerFinal(
        "hi there",
        (_moment(0, 1.0, None),),
        2,
        "stop",
        AnswerTimings(0.1, 5.0, 0.5, retrieval_s=0.05, blocks_loaded=3, disk_reads=0),
        token_ids=(7, 8),
    )
    for record in (AnswerDelta("hi"), final, AnswerFailed("busy", "later")):
        assert pickle.loads(pickle.dumps(record)) == record
    with pytest.raises(ValueError, match="token ids"):
        AnswerFinal("x", (), 3, "stop", AnswerTimings(None, None, 0.0), token_ids=(1,))
