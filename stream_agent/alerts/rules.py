"""Alert rules: the validated record (config file, WebSocket and MQTT share it) and its store.

A rule names the cameras it watches, a natural-language condition asked of the model as a yes/no
question, and its timing. :class:`RuleSpec` is the one form every entry point validates (unknown
keys rejected). :class:`RuleStore` holds the config file's rules (read-only, but they can be
paused) and the run-time rules, and persists the run-time ones and the pause flags in one JSON
file replaced atomically, so that they survive a restart.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, time, tzinfo
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from stream_agent.alerts.errors import (
    InvalidRule,
    ReadOnlyRule,
    RuleExists,
    StoreError,
    UnknownRule,
)
from stream_agent.durations import parse_duration

log = logging.getLogger(__name__)

RULE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
RESERVED_NAMES = frozenset({"state", "snapshot", "event", "set", "result", "all"})
"""Names that would collide with the MQTT topics under ``PREFIX/CAMERA/`` or ``PREFIX/rules/``."""
CONDITION_MIN, CONDITION_MAX = 3, 500
_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
STORE_VERSION = 1


def _duration(value: object) -> object:
    return parse_duration(value) if isinstance(value, str) else value


Seconds = Annotated[float, BeforeValidator(_duration)]


def _parse_hhmm(text: str) -> time:
    match = _HHMM.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a time of day; write HH:MM, like '07:30'")
    return time(int(match.group(1)), int(match.group(2)))


class TimeRange(BaseModel):
    """Local time of day ``start``..``end`` (end excluded); crosses midnight when end < start."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> TimeRange:
        parts = text.split("-")
        if len(parts) != 2:
            raise ValueError(f"{text!r} is not a time range; write HH:MM-HH:MM, like '22:00-06:00'")
        start, end = _parse_hhmm(parts[0]), _parse_hhmm(parts[1])
        if start == end:
            raise ValueError(f"{text!r} is empty; a range needs a different start and end")
        return cls(start=start, end=end)

    def contains(self, moment: time) -> bool:
        if self.start < self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def _time_range(value: object) -> object:
    return TimeRange.parse(value) if isinstance(value, str) else value


Hours = Annotated[TimeRange, BeforeValidator(_time_range)]


class GateSpec(BaseModel):
    """The cheap gates that decide whether the model is asked at all.

    ``motion``: the least share of the picture that changed (the change gate's share of changed
    cells; with the gate off, the cacher's recomputed share) since the rule's last check on that
    camera for the model to be asked; a still scene keeps the previous verdict and costs no
    model call (frames the gate holds back do not count as new at all). None switches the gate
    off. ``person``: ask only when OpenCV's HOG people detector finds a person in the newest
    frame; none found counts as the condition not holding.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    motion: float | None = Field(default=0.01, ge=0.0, le=1.0)
    person: bool = False


class RuleSpec(BaseModel):
    """One rule, as written in the config file or sent over WebSocket/MQTT."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    cameras: list[str] | Literal["all"] = "all"
    condition: str
    check_interval_s: Seconds = Field(default=5.0, ge=0.5, le=86_400)
    min_duration_s: Seconds = Field(default=0.0, ge=0.0, le=86_400)
    cooldown_s: Seconds = Field(default=30.0, ge=0.0, le=7 * 86_400)
    active_hours: list[Hours] | None = None
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    gates: GateSpec = GateSpec()
    paused: bool = False

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not RULE_NAME.match(value):
            raise ValueError(
                f"rule name {value!r} must be 1-63 lower-case letters, digits, '-' or '_', "
                "starting with a letter or digit"
            )
        if value in RESERVED_NAMES:
            raise ValueError(f"rule name {value!r} is reserved (it is an MQTT topic word)")
        return value

    @field_validator("cameras")
    @classmethod
    def _cameras(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, str):
            return value
        if not value:
            raise ValueError("cameras must name at least one camera, or be 'all'")
        if len(set(value)) != len(value):
            raise ValueError("cameras must not repeat a name")
        return value

    @field_validator("condition")
    @classmethod
    def _condition(cls, value: str) -> str:
        text = " ".join(value.split())
        if not CONDITION_MIN <= len(text) <= CONDITION_MAX:
            raise ValueError(
                f"condition must be {CONDITION_MIN}-{CONDITION_MAX} characters (got {len(text)})"
            )
        return text

    @field_validator("active_hours")
    @classmethod
    def _hours(cls, value: list[TimeRange] | None) -> list[TimeRange] | None:
        if value is not None and not value:
            raise ValueError("active_hours must list at least one range, or be left out")
        return value

    def applies_to(self, camera: str) -> bool:
        return self.cameras == "all" or camera in self.cameras

    def cameras_among(self, names: Iterable[str]) -> tuple[str, ...]:
        return tuple(n for n in names if self.applies_to(n))

    def is_active_at(self, unix_s: float, tz: tzinfo | None = None) -> bool:
        """Whether ``unix_s`` falls in the active hours (local time of ``tz``; None: the
        system's local time zone). Always true without active hours."""
        if self.active_hours is None:
            return True
        moment = datetime.fromtimestamp(unix_s, tz).time()
        return any(r.contains(moment) for r in self.active_hours)

    def to_json(self) -> dict[str, Any]:
        """The JSON form that :meth:`parse` reads back (times of day as strings)."""
        data = self.model_dump(mode="json")
        if self.active_hours is not None:
            data["active_hours"] = [str(r) for r in self.active_hours]
        return data

    @classmethod
    def parse(cls, data: object) -> RuleSpec:
        """Validate ``data``; raises :class:`InvalidRule` with every problem in one sentence."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InvalidRule(describe_errors(exc), field_errors(exc)) from None


def field_errors(exc: ValidationError) -> tuple[tuple[str, str], ...]:
    """(field, message) per error that names a field (list positions left out)."""
    out = []
    for err in exc.errors():
        where = ".".join(p for p in err["loc"] if isinstance(p, str))
        if where:
            out.append((where, err["msg"].removeprefix("Value error, ")))
    return tuple(out)


def describe_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "rule"
        message = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


RuleSource = Literal["config", "runtime"]


@dataclass(frozen=True, slots=True)
class Rule:
    """A rule as the store holds it: the spec and where it came from."""

    spec: RuleSpec
    source: RuleSource

    @property
    def name(self) -> str:
        return self.spec.name

    def to_json(self) -> dict[str, Any]:
        return {**self.spec.to_json(), "source": self.source}


class RuleStore:
    """The rules in force: the config file's (fixed) and the run-time ones (persisted).

    Thread-safe. Every change is written to ``path`` (JSON, written to a temporary file, flushed
    and renamed over the old one, so a crash leaves the old or the new file, never half of one)
    before it takes effect; a failed write raises :class:`StoreError` and changes nothing. A file
    that cannot be read raises :class:`StoreError` at construction and is left untouched.
    ``path`` None keeps run-time rules in memory only.
    """

    def __init__(self, config_rules: Iterable[RuleSpec], path: Path | None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._config: dict[str, RuleSpec] = {}
        for spec in config_rules:
            if spec.name in self._config:
                raise InvalidRule(f"two rules in the config are named {spec.name!r}")
            self._config[spec.name] = spec
        self._runtime: dict[str, RuleSpec] = {}
        self._paused_config: set[str] = set()
        if path is not None and path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("version") != STORE_VERSION:
                raise ValueError(f"not a version {STORE_VERSION} rule store")
            runtime = [RuleSpec.model_validate(item) for item in data.get("rules", [])]
            paused = {str(n) for n in data.get("paused_config_rules", [])}
        except (OSError, ValueError, ValidationError) as exc:
            raise StoreError(
                f"cannot read the rule store {path}: {exc}; fix or move the file away"
            ) from None
        for spec in runtime:
            if spec.name in self._config:
                log.warning(
                    "run-time rule %r is shadowed by a config rule of the same name", spec.name
                )
                continue
            self._runtime[spec.name] = spec
        self._paused_config = paused & set(self._config)
        log.info("rule store loaded: %d run-time rules from %s", len(self._runtime), path)

    def _save(self, runtime: Mapping[str, RuleSpec], paused: set[str]) -> None:
        if self._path is None:
            return
        data = {
            "version": STORE_VERSION,
            "rules": [s.to_json() for s in runtime.values()],
            "paused_config_rules": sorted(paused),
        }
        tmp = self._path.with_name(self._path.name + ".tmp")
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("w", encoding="utf-8") as out:
                json.dump(data, out, indent=1)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self._path)
        except OSError as exc:
            raise StoreError(f"cannot write the rule store {self._path}: {exc}") from None

    # --- reads -----------------------------------------------------------------------------

    def all(self) -> tuple[Rule, ...]:
        with self._lock:
            return tuple(self._rule(n) for n in [*self._config, *self._runtime])

    def get(self, name: str) -> Rule:
        with self._lock:
            return self._rule(name)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._config or name in self._runtime

    def _rule(self, name: str) -> Rule:
        if name in self._config:
            spec = self._config[name]
            if name in self._paused_config:
                spec = spec.model_copy(update={"paused": True})
            return Rule(spec, "config")
        if name in self._runtime:
            return Rule(self._runtime[name], "runtime")
        raise UnknownRule(f"no rule named {name!r}")

    # --- changes ---------------------------------------------------------------------------

    def add(self, spec: RuleSpec) -> Rule:
        with self._lock:
            if spec.name in self._config or spec.name in self._runtime:
                raise RuleExists(f"a rule named {spec.name!r} already exists")
            runtime = {**self._runtime, spec.name: spec}
            self._save(runtime, self._paused_config)
            self._runtime = runtime
            return Rule(spec, "runtime")

    def update(self, name: str, changes: Mapping[str, object]) -> Rule:
        """Change fields of a run-time rule (``name`` itself cannot change)."""
        with self._lock:
            if name in self._config:
                raise ReadOnlyRule(f"rule {name!r} comes from the config file; edit it there")
            old = self._runtime.get(name)
            if old is None:
                raise UnknownRule(f"no rule named {name!r}")
            if "name" in changes and changes["name"] != name:
                raise InvalidRule("a rule cannot be renamed; remove it and add a new one")
            spec = RuleSpec.parse({**old.to_json(), **changes})
            runtime = {**self._runtime, name: spec}
            self._save(runtime, self._paused_config)
            self._runtime = runtime
            return Rule(spec, "runtime")

    def set_paused(self, name: str, paused: bool) -> Rule:
        with self._lock:
            if name in self._config:
                flags = self._paused_config | {name} if paused else self._paused_config - {name}
                self._save(self._runtime, flags)
                self._paused_config = flags
                return self._rule(name)
            old = self._runtime.get(name)
            if old is None:
                raise UnknownRule(f"no rule named {name!r}")
            runtime = {**self._runtime, name: old.model_copy(update={"paused": paused})}
            self._save(runtime, self._paused_config)
            self._runtime = runtime
            return self._rule(name)

    def remove(self, name: str) -> Rule:
        with self._lock:
            if name in self._config:
                raise ReadOnlyRule(f"rule {name!r} comes from the config file; edit it there")
            old = self._runtime.get(name)
            if old is None:
                raise UnknownRule(f"no rule named {name!r}")
            runtime = {k: v for k, v in self._runtime.items() if k != name}
            self._save(runtime, self._paused_config)
            self._runtime = runtime
            return Rule(old, "runtime")
