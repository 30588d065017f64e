"""The rule state machine: documented promises as properties."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from stream_agent.alerts.rules import RuleSpec
from stream_agent.alerts.state import Gated, Lifecycle, Observation, RuleState, Scored


def rule(**kw: object) -> RuleSpec:
    return RuleSpec.parse({"name": "r", "condition": "is anyone there?", **kw})


def machine() -> RuleState:
    counter = itertools.count()
    return RuleState("r", "cam", make_id=lambda t, r, c: f"ev{next(counter)}")


@dataclass
class Run:
    spec: RuleSpec
    observations: list[Observation]
    events: list[Lifecycle]


@st.composite
def runs(draw: st.DrawFn) -> Run:
    spec = rule(
        threshold=draw(st.sampled_from([0.3, 0.5, 0.8])),
        min_duration_s=draw(st.sampled_from([0.0, 1.0, 3.0])),
        cooldown_s=draw(st.sampled_from([0.0, 2.0, 10.0])),
        check_interval_s=1.0,
    )
    steps = draw(
        st.lists(
            st.tuples(
                st.floats(0.01, 3.0),
                st.one_of(
                    st.floats(0.0, 1.0).map(lambda s: ("score", s)),
                    st.sampled_from([("gate", "motion"), ("gate", "person")]),
                ),
            ),
            max_size=60,
        )
    )
    t = 1000.0
    obs: list[Observation] = []
    for dt, (kind, value) in steps:
        t += dt
        obs.append(Scored(t, value) if kind == "score" else Gated(t, str(value)))
    m = machine()
    events: list[Lifecycle] = []
    for o in obs:
        events += m.observe(o, spec)
    if draw(st.booleans()):
        events += m.close(t + 1, "shutdown")
    return Run(spec, obs, events)


@settings(max_examples=300, deadline=None)
@given(runs())
def test_starts_and_ends_alternate_and_every_end_matches_an_open_start(run: Run) -> None:
    open_id: str | None = None
    seen: set[str] = set()
    for ev in run.events:
        if ev.type == "start":
            assert open_id is None and ev.id not in seen
            open_id = ev.id
            seen.add(ev.id)
            assert ev.before is None
        else:
            assert open_id == ev.id and ev.before is not None and ev.before.id == ev.id
            if ev.type == "end":
                open_id = None
                assert ev.after.end_time == ev.t


@settings(max_examples=300, deadline=None)
@given(runs())
def test_min_duration_holds_before_a_start(run: Run) -> None:
    spec = run.spec
    for ev in run.events:
        if ev.type != "start":
            continue
        begin = ev.after.start_time
        assert ev.t - begin >= spec.min_duration_s
        window = [o for o in run.observations if begin <= o.t <= ev.t]
        for o in window:  # nothing in the window said "no"
            assert not isinstance(o, Gated) or o.reason == "motion"
            assert not isinstance(o, Scored) or o.score >= spec.threshold


@settings(max_examples=300, deadline=None)
@given(runs())
def test_no_start_within_the_cooldown_after_an_end(run: Run) -> None:
    last_end: float | None = None
    for ev in run.events:
        if ev.type == "end":
            last_end = ev.t
        elif ev.type == "start" and last_end is not None:
            assert ev.after.start_time >= last_end + run.spec.cooldown_s
            assert ev.t >= last_end + run.spec.cooldown_s


@settings(max_examples=200, deadline=None)
@given(runs())
def test_an_event_ends_on_the_first_check_that_says_no(run: Run) -> None:
    m = machine()
    for o in run.observations:
        out = m.observe(o, run.spec)
        says_no = (isinstance(o, Scored) and o.score < run.spec.threshold) or (
            isinstance(o, Gated) and o.reason == "person"
        )
        if m.event is None and out and out[-1].type == "end":
            assert says_no
        if says_no:
            assert m.event is None


def test_lifecycle_example() -> None:
    spec = rule(min_duration_s=2, cooldown_s=5, threshold=0.5)
    m = machine()
    assert m.observe(Scored(0, 0.9), spec) == []
    assert m.phase == "pending"
    assert m.observe(Gated(1, "motion"), spec) == []  # still scene: verdict stands
    [start] = m.observe(Scored(2, 0.7), spec)
    assert (start.type, start.after.start_time, start.id) == ("start", 0, "ev0")
    [upd] = m.observe(Scored(3, 0.95), spec)
    assert upd.type == "update" and upd.after.peak_score == 0.95
    [desc] = m.annotate("ev0", 3.5, description="A person stands at the door.")
    assert desc.after.description == "A person stands at the door."
    [end] = m.observe(Scored(4, 0.1), spec)
    assert end.type == "end" and end.after.end_reason == "cleared" and end.after.end_time == 4
    assert end.after.description == "A person stands at the door."
    assert m.observe(Scored(5, 0.9), spec) == [] and m.suppressed == 1  # cooldown
    assert m.observe(Scored(9, 0.9), spec) == []
    assert m.observe(Scored(11, 0.9), spec)[0].type == "start"


def test_paused_and_inactive_hours_end_an_open_event() -> None:
    m = machine()
    spec = rule()
    m.observe(Scored(0, 0.9), spec)
    [end] = m.observe(Scored(1, 0.9), rule(paused=True))
    assert end.after.end_reason == "paused"
    m2 = machine()
    m2.observe(Scored(0, 0.9), spec)
    never = rule(active_hours=["00:00-00:01", "00:01-00:02"])
    [end2] = m2.observe(Scored(43_200, 0.9), never)  # noon UTC is outside
    assert end2.after.end_reason == "inactive_hours"
