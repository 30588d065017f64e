"""Which engine owns which camera: a pure function of the cameras' loads and the live engines.

A camera's load is what it costs its engine per second: frames per second times visual tokens
per frame (the tokens the pruner lets into the LLM, which dominate the prefill cost). Cameras
are placed heaviest first on the least-loaded engine (longest-processing-time greedy: the
heaviest engine carries at most 4/3 of the optimum). When an engine dies only its cameras move
(heaviest first, each to the least-loaded survivor), so that no other camera loses the engine
whose memory it was building.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


class PlacementError(ValueError):
    """No engine is left to own the cameras (or the inputs contradict each other)."""


@dataclass(frozen=True, slots=True)
class CameraLoad:
    """One camera's cost to its engine: ``fps`` x ``tokens_per_frame`` tokens per second."""

    camera: str
    fps: float
    tokens_per_frame: int

    @property
    def load(self) -> float:
        return self.fps * self.tokens_per_frame


def engine_loads(
    assignment: Mapping[str, str], loads: Iterable[CameraLoad], engines: Iterable[str]
) -> dict[str, float]:
    """The load on each engine (0 for one without cameras) under ``assignment``."""
    by_camera = {c.camera: c.load for c in loads}
    totals = {e: 0.0 for e in engines}
    for camera, engine in assignment.items():
        totals[engine] = totals.get(engine, 0.0) + by_camera.get(camera, 0.0)
    return totals


def _least_loaded(totals: Mapping[str, float]) -> str:
    # ties go to the engine named first, so that a placement is reproducible
    return min(sorted(totals), key=lambda e: totals[e])


def _heaviest_first(loads: Iterable[CameraLoad]) -> list[CameraLoad]:
    return sorted(loads, key=lambda c: (-c.load, c.camera))


def assign(loads: Iterable[CameraLoad], engines: Iterable[str]) -> dict[str, str]:
    """A camera -> engine map for every camera, balancing the load over ``engines``."""
    names = list(dict.fromkeys(engines))
    cams = list(loads)
    if cams and not names:
        raise PlacementError("there is no engine to place the cameras on")
    totals = {e: 0.0 for e in names}
    result: dict[str, str] = {}
    for cam in _heaviest_first(cams):
        engine = _least_loaded(totals)
        result[cam.camera] = engine
        totals[engine] += cam.load
    return result


def reassign(
    assignment: Mapping[str, str],
    loads: Iterable[CameraLoad],
    alive: Iterable[str],
) -> dict[str, str]:
    """``assignment`` after the engines not in ``alive`` died: their cameras (and any camera
    not yet placed) go to the survivors, least-loaded first; every other camera stays put."""
    survivors = list(dict.fromkeys(alive))
    cams = list(loads)
    if cams and not survivors:
        raise PlacementError("every engine has died; no camera can be placed")
    kept = {c: e for c, e in assignment.items() if e in survivors}
    totals = engine_loads(kept, cams, survivors)
    result = dict(kept)
    for cam in _heaviest_first(c for c in cams if c.camera not in kept):
        engine = _least_loaded(totals)
        result[cam.camera] = engine
        totals[engine] += cam.load
    known = {c.camera for c in cams}
    return {c: e for c, e in result.items() if c in known}
