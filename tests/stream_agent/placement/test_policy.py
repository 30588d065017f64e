"""The placement policy's promises, as properties: every camera placed on a live engine, the
load balanced within LPT's bound, and a death moving only the dead engine's cameras."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_agent.placement.policy import (
    CameraLoad,
    PlacementError,
    assign,
    engine_loads,
    reassign,
)

loads_st = st.lists(
    st.builds(
        CameraLoad,
        camera=st.text("abcdefgh", min_size=1, max_size=4),
        fps=st.floats(0.1, 30.0),
        tokens_per_frame=st.integers(1, 512),
    ),
    max_size=20,
    unique_by=lambda c: c.camera,
)
engines_st = st.lists(st.text("EFGH", min_size=1, max_size=3), min_size=1, max_size=6, unique=True)


@given(loads_st, engines_st)
def test_every_camera_gets_one_of_the_engines(loads: list[CameraLoad], engines: list[str]) -> None:
    result = assign(loads, engines)
    assert set(result) == {c.camera for c in loads}
    assert set(result.values()) <= set(engines)


@given(loads_st, engines_st)
def test_the_heaviest_engine_is_within_the_greedy_bound(
    loads: list[CameraLoad], engines: list[str]
) -> None:
    result = assign(loads, engines)
    totals = engine_loads(result, loads, engines)
    if not loads:
        return
    heaviest_camera = max(c.load for c in loads)
    mean = sum(c.load for c in loads) / len(engines)
    # greedy on the heaviest-first order: no engine exceeds the mean by more than one camera
    assert max(totals.values()) <= mean + heaviest_camera + 1e-6


@given(loads_st, engines_st, st.data())
def test_a_death_moves_only_the_dead_engines_cameras(
    loads: list[CameraLoad], engines: list[str], data: st.DataObject
) -> None:
    before = assign(loads, engines)
    alive = data.draw(st.lists(st.sampled_from(engines), min_size=1, unique=True))
    after = reassign(before, loads, alive)
    assert set(after) == {c.camera for c in loads}
    assert set(after.values()) <= set(alive)
    for camera, engine in before.items():
        if engine in alive:
            assert after[camera] == engine


@given(loads_st.filter(bool))
def test_no_engine_left_is_a_clear_error(loads: list[CameraLoad]) -> None:
    with pytest.raises(PlacementError):
        assign(loads, [])
    with pytest.raises(PlacementError):
        reassign({c.camera: "E" for c in loads}, loads, [])


def test_two_engines_three_cameras() -> None:
    loads = [CameraLoad("a", 1.0, 64), CameraLoad("b", 1.0, 64), CameraLoad("c", 2.0, 64)]
    result = assign(loads, ["e0", "e1"])
    assert result == {"c": "e0", "a": "e1", "b": "e1"}
    assert reassign(result, loads, ["e1"]) == {"a": "e1", "b": "e1", "c": "e1"}
