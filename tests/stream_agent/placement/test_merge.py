"""The all-cameras merge: the best-scoring memory's answer, every memory's best moment shown."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stream_agent.engine.records import Moment
from stream_agent.placement.merge import Candidate, best_score, pick

moment_st = st.builds(
    Moment,
    camera=st.sampled_from(["a", "b", "c"]),
    start_pts=st.floats(0, 100),
    end_pts=st.floats(0, 100),
    start_wall=st.just(0.0),
    end_wall=st.just(1.0),
    score=st.floats(-1, 1),
)
candidate_st = st.builds(
    Candidate,
    source=st.text("xyz", min_size=1, max_size=3),
    text=st.text(max_size=5),
    evidence=st.lists(moment_st, max_size=8).map(tuple),
    tokens=st.integers(0, 9),
)


@given(st.lists(candidate_st, min_size=1, max_size=5), st.integers(1, 80))
def test_pick_keeps_the_best_answer_and_every_memorys_best_moment(
    candidates: list[Candidate], cap: int
) -> None:
    best = pick(candidates, max_evidence=cap)
    top = max(best_score(c.evidence) for c in candidates)
    assert best_score(best.evidence) == top or not best.evidence
    assert best.text in {c.text for c in candidates if best_score(c.evidence) == top}
    assert len(best.evidence) <= cap
    having = [c for c in candidates if c.evidence]
    if len(having) <= cap:
        for c in having:
            assert any(m in best.evidence for m in c.evidence)
