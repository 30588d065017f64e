"""The pure per-(rule, camera) state machine: check results in, lifecycle events out.

Input is a time-ordered sequence of :class:`Scored` (the model's yes-probability) and
:class:`Gated` (a cheap gate stopped the check) observations. Output is :class:`Lifecycle` events
of one stable event id each: ``start`` once the condition has held for ``min_duration_s``,
``update`` when the peak score rises or the description arrives, ``end`` on the first check
where it no longer holds (or when the rule is paused, leaves its active hours, or the event is
closed by the caller). No new event starts within ``cooldown_s`` after an end: observations in
that window neither start nor arm one.

Gates: ``motion`` (a still scene) says nothing new, so the verdict stands; ``person`` (no person
found) counts as the condition not holding. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import tzinfo
from typing import Literal

from stream_agent.alerts.rules import RuleSpec

EventType = Literal["start", "update", "end"]
UPDATE_MIN_RISE = 0.05
"""A higher peak score is reported as an update only when it rose by at least this much."""
FALSE_GATES = frozenset({"person"})
"""Gates whose stop means "the condition does not hold" (the others keep the verdict)."""


@dataclass(frozen=True, slots=True)
class Scored:
    """The model answered: ``score`` is its probability of "yes" in [0, 1]."""

    t: float
    score: float
    moments: tuple[tuple[float, float], ...] = ()
    """(start_wall, end_wall) of the memory blocks the check was asked over."""


@dataclass(frozen=True, slots=True)
class Gated:
    """A gate stopped the check before the model was asked; ``reason`` names the gate."""

    t: float
    reason: str


Observation = Scored | Gated


@dataclass(frozen=True, slots=True)
class EventRecord:
    """What is known of one event at one moment (the ``before``/``after`` of a lifecycle)."""

    id: str
    rule: str
    camera: str
    start_time: float
    end_time: float | None = None
    score: float = 0.0
    """The latest score of the condition."""
    peak_score: float = 0.0
    description: str | None = None
    moments: tuple[tuple[float, float], ...] = ()
    snapshot: str | None = None
    """The frame store key of the event's picture."""
    end_reason: str | None = None

    @property
    def active(self) -> bool:
        return self.end_time is None

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "rule": self.rule,
            "camera": self.camera,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "active": self.active,
            "score": round(self.score, 4),
            "peak_score": round(self.peak_score, 4),
            "description": self.description,
            "moments": [list(m) for m in self.moments],
            "has_snapshot": self.snapshot is not None,
            "end_reason": self.end_reason,
        }


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """One lifecycle step of an event, emitted at time ``t``."""

    type: EventType
    t: float
    before: EventRecord | None
    after: EventRecord

    @property
    def id(self) -> str:
        return self.after.id


def new_event_id(t: float, rule: str, camera: str) -> str:
    """``<unix seconds>-<rule>-<camera>-<6 hex>``: sortable by time, readable, unique."""
    return f"{t:.3f}-{rule}-{camera}-{secrets.token_hex(3)}"


@dataclass(slots=True)
class RuleState:
    """The state of one rule on one camera.

    ``idle`` -> (condition holds, not in cooldown) ``pending`` -> (held ``min_duration_s``)
    ``active`` -> (no longer holds) ``idle``. ``observe`` and ``close`` return the lifecycle
    events the step caused (zero, one, or an end and nothing else).
    """

    rule: str
    camera: str
    make_id: Callable[[float, str, str], str] = new_event_id
    pending_since: float | None = None
    event: EventRecord | None = None
    last_end: float | None = None
    last_t: float | None = None
    suppressed: int = field(default=0)
    """Checks where the condition held inside a cooldown (counted, not started)."""

    @property
    def phase(self) -> Literal["idle", "pending", "active"]:
        if self.event is not None:
            return "active"
        return "pending" if self.pending_since is not None else "idle"

    def observe(
        self, obs: Observation, spec: RuleSpec, tz: tzinfo | None = None
    ) -> list[Lifecycle]:
        if self.last_t is not None and obs.t < self.last_t:
            raise ValueError("observations must come in time order")
        self.last_t = obs.t
        if spec.paused:
            return self.close(obs.t, "paused")
        if not spec.is_active_at(obs.t, tz):
            return self.close(obs.t, "inactive_hours")
        if isinstance(obs, Gated):
            if obs.reason not in FALSE_GATES:
                return []
            return self._step(obs.t, 0.0, False, (), spec)
        return self._step(obs.t, obs.score, obs.score >= spec.threshold, obs.moments, spec)

    def _step(
        self,
        t: float,
        score: float,
        holds: bool,
        moments: tuple[tuple[float, float], ...],
        spec: RuleSpec,
    ) -> list[Lifecycle]:
        if self.event is not None:
            if not holds:
                return self._end(t, score, "cleared")
            before = self.event
            rose = score >= before.peak_score + UPDATE_MIN_RISE
            after = replace(
                before,
                score=score,
                peak_score=max(before.peak_score, score),
                moments=moments or before.moments,
            )
            self.event = after
            return [Lifecycle("update", t, before, after)] if rose else []
        if not holds:
            self.pending_since = None
            return []
        if self.last_end is not None and t < self.last_end + spec.cooldown_s:
            self.suppressed += 1
            self.pending_since = None
            return []
        if self.pending_since is None:
            self.pending_since = t
        if t - self.pending_since < spec.min_duration_s:
            return []
        start = self.pending_since
        self.pending_since = None
        self.event = EventRecord(
            id=self.make_id(start, self.rule, self.camera),
            rule=self.rule,
            camera=self.camera,
            start_time=start,
            score=score,
            peak_score=score,
            moments=moments,
        )
        return [Lifecycle("start", t, None, self.event)]

    def _end(self, t: float, score: float, reason: str) -> list[Lifecycle]:
        assert self.event is not None
        before = self.event
        after = replace(before, end_time=t, score=score, end_reason=reason)
        self.event = None
        self.last_end = t
        return [Lifecycle("end", t, before, after)]

    def close(self, t: float, reason: str) -> list[Lifecycle]:
        """End an open event (camera gone, rule paused/removed, shutdown); forget a pending one."""
        self.pending_since = None
        if self.event is None:
            return []
        return self._end(t, self.event.score, reason)

    def annotate(
        self,
        event_id: str,
        t: float,
        *,
        description: str | None = None,
        snapshot: str | None = None,
    ) -> list[Lifecycle]:
        """Attach a description or snapshot key to the open event ``event_id`` (an update);
        nothing if that event has ended meanwhile (the caller stores it in the history)."""
        if self.event is None or self.event.id != event_id:
            return []
        before = self.event
        after = replace(
            before,
            description=description if description is not None else before.description,
            snapshot=snapshot if snapshot is not None else before.snapshot,
        )
        self.event = after
        return [Lifecycle("update", t, before, after)] if description is not None else []
