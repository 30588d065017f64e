"""Rule validation and the persisted rule store."""

from __future__ import annotations

import json
from datetime import UTC, datetime, time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_agent.alerts.errors import (
    InvalidRule,
    ReadOnlyRule,
    RuleExists,
    StoreError,
    UnknownRule,
)
from stream_agent.alerts.rules import RuleSpec, RuleStore, TimeRange

BASE = {"name": "person-at-door", "condition": "Is a person standing at the door?"}


def spec(**kw: object) -> RuleSpec:
    return RuleSpec.parse({**BASE, **kw})


def test_defaults_and_round_trip() -> None:
    r = spec(active_hours=["22:00-06:00"], check_interval_s="1m", cameras=["door"])
    assert r.check_interval_s == 60.0 and r.cameras == ["door"] and r.threshold == 0.5
    assert r.gates.motion == 0.01 and r.gates.person is False
    assert RuleSpec.parse(json.loads(json.dumps(r.to_json()))) == r


@pytest.mark.parametrize(
    ("change", "word"),
    [
        ({"colour": "red"}, "colour"),
        ({"name": "Bad Name"}, "name"),
        ({"name": "state"}, "reserved"),
        ({"cameras": []}, "cameras"),
        ({"cameras": ["a", "a"]}, "repeat"),
        ({"condition": "no"}, "condition"),
        ({"condition": "x" * 501}, "condition"),
        ({"threshold": 1.0}, "threshold"),
        ({"threshold": 0}, "threshold"),
        ({"check_interval_s": 0.1}, "check_interval_s"),
        ({"cooldown_s": -1}, "cooldown_s"),
        ({"active_hours": ["25:00-06:00"]}, "time of day"),
        ({"active_hours": ["08:00-08:00"]}, "empty"),
        ({"active_hours": []}, "active_hours"),
        ({"gates": {"motion": 2}}, "motion"),
        ({"gates": {"faces": True}}, "faces"),
    ],
)
def test_invalid_rules_are_refused_with_the_reason(change: dict[str, object], word: str) -> None:
    with pytest.raises(InvalidRule, match=word):
        spec(**change)


@given(st.times(), st.times(), st.times())
def test_time_ranges_cross_midnight(a: time, b: time, probe: time) -> None:
    a, b, probe = (t.replace(second=0, microsecond=0) for t in (a, b, probe))
    if a == b:
        return
    r = TimeRange(start=a, end=b)
    inside = a <= probe < b if a < b else not (b <= probe < a)
    assert r.contains(probe) == inside


def test_active_hours_use_the_given_time_zone() -> None:
    r = spec(active_hours=["22:00-06:00"])
    night = datetime(2026, 1, 1, 23, 30, tzinfo=UTC).timestamp()
    noon = datetime(2026, 1, 1, 12, 0, tzinfo=UTC).timestamp()
    assert r.is_active_at(night, UTC) and not r.is_active_at(noon, UTC)
    assert spec().is_active_at(noon, UTC)


def test_store_persists_runtime_rules_and_pause_flags(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    fixed = spec(name="fixed")
    store = RuleStore([fixed], path)
    store.add(spec(name="added", threshold=0.7))
    store.set_paused("fixed", True)
    store.update("added", {"cooldown_s": 5})
    again = RuleStore([fixed], path)
    assert [(r.name, r.source) for r in again.all()] == [("fixed", "config"), ("added", "runtime")]
    assert again.get("fixed").spec.paused is True
    assert again.get("added").spec.cooldown_s == 5 and again.get("added").spec.threshold == 0.7
    assert not list(tmp_path.glob("*.tmp"))
    again.remove("added")
    assert [r.name for r in RuleStore([fixed], path).all()] == ["fixed"]


def test_store_refuses_what_it_cannot_do_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    store = RuleStore([spec(name="fixed")], path)
    store.add(spec(name="added"))
    before = path.read_bytes()
    with pytest.raises(RuleExists):
        store.add(spec(name="fixed"))
    with pytest.raises(ReadOnlyRule):
        store.update("fixed", {"threshold": 0.9})
    with pytest.raises(ReadOnlyRule):
        store.remove("fixed")
    with pytest.raises(UnknownRule):
        store.remove("nope")
    with pytest.raises(InvalidRule, match="threshold"):
        store.update("added", {"threshold": 7})
    with pytest.raises(InvalidRule, match="renamed"):
        store.update("added", {"name": "other"})
    assert path.read_bytes() == before
    assert store.get("added").spec.threshold == 0.5


def test_a_corrupt_store_is_reported_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text("{not json")
    with pytest.raises(StoreError, match=r"rules\.json"):
        RuleStore([], path)
    assert path.read_text() == "{not json"


def test_a_failed_write_changes_nothing(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    store = RuleStore([], blocked / "rules.json")  # parent is a file: cannot write
    with pytest.raises(StoreError):
        store.add(spec(name="x"))
    assert store.all() == ()


hhmm = st.tuples(st.integers(0, 23), st.integers(0, 59)).map(lambda t: f"{t[0]:02d}:{t[1]:02d}")


@st.composite
def rule_json(draw: st.DrawFn) -> dict[str, object]:
    ranges = [f"{a}-{b}" for a, b in draw(st.lists(st.tuples(hhmm, hhmm), max_size=3)) if a != b]
    return {
        "name": draw(
            st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True).filter(
                lambda n: n not in {"state", "snapshot", "event", "set", "result", "all"}
            )
        ),
        "cameras": draw(
            st.one_of(
                st.just("all"),
                st.lists(
                    st.from_regex(r"[a-z]{1,8}", fullmatch=True),
                    min_size=1,
                    max_size=3,
                    unique=True,
                ),
            )
        ),
        "condition": draw(
            st.text(
                st.characters(codec="utf-8", categories=["L", "N", "Zs"]), min_size=3, max_size=80
            ).filter(lambda t: len(" ".join(t.split())) >= 3)
        ),
        "check_interval_s": draw(st.floats(0.5, 3600)),
        "min_duration_s": draw(st.floats(0, 600)),
        "cooldown_s": draw(st.floats(0, 600)),
        "active_hours": ranges or None,
        "threshold": draw(st.floats(0.01, 0.99)),
        "gates": {
            "motion": draw(st.one_of(st.none(), st.floats(0, 1))),
            "person": draw(st.booleans()),
        },
        "paused": draw(st.booleans()),
    }


@given(rule_json())
def test_the_json_form_parses_back_to_the_same_rule(data: dict[str, object]) -> None:
    r = RuleSpec.parse(data)
    assert RuleSpec.parse(json.loads(json.dumps(r.to_json()))) == r
