"""The alerts service: schedules rule checks, runs the state machines, stores, publishes.

It depends on the rest of the daemon only through two Protocols defined here:

* :class:`AlertEngine`: ``check(camera, questions)`` answers a batch of yes/no rule questions
  over the camera's newest memory blocks with the model's yes-probabilities, and
  ``describe(camera, event, condition)`` writes one sentence about an event. Both block; the
  service calls them on its own single engine thread, never on the event loop.
* :class:`CameraBoardLike`: camera names, their states, the newest frame and its JPEG.

Every ``tick_s`` the scheduler finds, per camera, the rules that are due (their
``check_interval_s`` has passed since their last check there). Each due rule goes through the
gates (paused, active hours, camera offline, no new frames, motion, person; the stopping gate is
counted per rule); the survivors of one camera go to the engine as ONE batch. Cameras take turns
(round robin), one batch at a time. Results feed the per-(rule, camera) state machines; each
lifecycle step is recorded in the history, published on MQTT (when configured) and handed to
subscribers (the WebSocket side). A start is published at once with its snapshot; the
description is asked for afterwards and follows as an update, so a slow or failing model never
holds an alert back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import tzinfo
from typing import Protocol

import numpy as np
import numpy.typing as npt

from stream_agent.alerts import gates as g
from stream_agent.alerts.commands import ChangeKind, RuleCommands
from stream_agent.alerts.discovery import DeviceInfo, device_config, platforms
from stream_agent.alerts.errors import InvalidRule, UnknownRule
from stream_agent.alerts.history import EventHistory
from stream_agent.alerts.mqtt import MqttLink
from stream_agent.alerts.rules import Rule, RuleSpec, RuleStore
from stream_agent.alerts.snapshots import SnapshotStore, snapshot_key
from stream_agent.alerts.state import EventRecord, Gated, Lifecycle, RuleState, Scored
from stream_agent.alerts.topics import RESERVED_CAMERA_NAMES, Topics, check_topic_word

log = logging.getLogger(__name__)

DESCRIPTION_MAX = 300
PRUNE_EVERY_S = 60.0


# --- what the daemon provides --------------------------------------------------------------


class FrameLike(Protocol):
    @property
    def seq(self) -> int: ...
    @property
    def wall_time(self) -> float: ...
    @property
    def image(self) -> npt.NDArray[np.uint8]: ...


class CameraViewLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def reason(self) -> str: ...


class CameraBoardLike(Protocol):
    """What the alerts need of the camera board."""

    @property
    def names(self) -> tuple[str, ...]: ...
    def views(self) -> Sequence[CameraViewLike]: ...
    def latest_frame(self, name: str) -> FrameLike | None: ...
    def snapshot_jpeg(self, name: str, quality: int = 85) -> tuple[FrameLike, bytes] | None: ...


@dataclass(frozen=True, slots=True)
class RuleQuestion:
    """One rule's yes/no question over one camera's memory since ``since`` (Unix s)."""

    rule: str
    condition: str
    since: float | None


@dataclass(frozen=True, slots=True)
class CheckAnswer:
    """The model's probability of "yes" (from its next-token probabilities of yes and no,
    renormalised over the two), and the (start_wall, end_wall) of the blocks it looked at."""

    score: float
    moments: tuple[tuple[float, float], ...] = ()


class AlertEngine(Protocol):
    """The model side of the alerts (blocking calls; run off the event loop by the service)."""

    def check(self, camera: str, questions: Sequence[RuleQuestion]) -> Sequence[CheckAnswer]: ...
    def describe(self, camera: str, event: EventRecordLike, condition: str) -> str: ...


class EventRecordLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def start_time(self) -> float: ...
    @property
    def moments(self) -> tuple[tuple[float, float], ...]: ...


Subscriber = Callable[[Lifecycle], None]
REMOVED_COMPONENTS_KEPT = 256
"""Removed discovery components still announced as removed (oldest forgotten first)."""
RuleWatcher = Callable[[ChangeKind, Rule], None]
"""Told of a rule change: (what, the rule after it; for ``remove``, the rule as it was)."""


@dataclass(frozen=True, slots=True)
class _Subscription:
    callback: Subscriber
    camera: str | None
    rule: str | None
    on_rule: RuleWatcher | None = None


class AlertService:
    """Runs the rules against the cameras until :meth:`stop`."""

    def __init__(
        self,
        *,
        store: RuleStore,
        board: CameraBoardLike,
        engine: AlertEngine,
        history: EventHistory,
        snapshots: SnapshotStore,
        link: MqttLink | None = None,
        device: DeviceInfo | None = None,
        discovery: bool = True,
        command_token: str | None = None,
        motion: g.MotionLog | None = None,
        person: g.PersonDetector | None = None,
        tick_s: float = 0.25,
        retention_s: float | None = None,
        history_max_bytes: int | None = 64 * 1024 * 1024,
        stats_interval_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        tz: tzinfo | None = None,
    ) -> None:
        for camera in board.names:
            check_topic_word(camera, "camera name")
            if camera in RESERVED_CAMERA_NAMES:
                raise ValueError(f"camera name {camera!r} is reserved by the MQTT topics")
        self._store = store
        self._board = board
        self._engine = engine
        self._history = history
        self._snapshots = snapshots
        self._link = link
        self._topics = link.topics if link is not None else Topics()
        self._device = device or DeviceInfo(node_id="stream_agent")
        self._discovery = discovery and link is not None
        self.motion = motion or g.MotionLog()
        self._person = person
        self._tick_s = tick_s
        self._retention_s = retention_s
        self._history_max_bytes = history_max_bytes
        self._stats_interval_s = stats_interval_s
        self._clock = clock
        self._tz = tz
        self.counters = g.GateCounters()
        self.commands = RuleCommands(
            store, self._rule_changed, token=command_token, check=self._check_rule
        )
        self._states: dict[tuple[str, str], RuleState] = {}
        self._last_check: dict[tuple[str, str], float] = {}
        self._motion_mark: dict[tuple[str, str], int] = {}  # MotionLog marks per (rule, camera)
        self._person_cache: dict[str, tuple[int, g.PersonResult]] = {}
        self._camera_states: dict[str, tuple[str, str]] = {}
        self._published_platforms: dict[str, str] = {}
        self._removed_components: dict[str, str] = {}
        self._subscribers: list[_Subscription] = []
        self._describing: set[asyncio.Task[None]] = set()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, "alerts-engine")
        self._stopping = asyncio.Event()
        self._turn = 0
        self._engine_failing = False
        self._started = clock()
        self.describe_failures = 0
        if link is not None:
            link.set_message_handler(self._on_mqtt_message)

    # --- inputs ------------------------------------------------------------------------------

    def note_frame(self, camera: str, wall_time: float, changed_share: float | None) -> None:
        """A frame of ``camera`` went through the cacher with this changed-token share (None:
        unknown). Any thread."""
        self.motion.note(camera, wall_time, changed_share)

    def subscribe(
        self,
        callback: Subscriber,
        *,
        camera: str | None = None,
        rule: str | None = None,
        on_rule: RuleWatcher | None = None,
    ) -> Callable[[], None]:
        """Call ``callback`` (on the event loop) with every lifecycle step matching the
        filters, and ``on_rule`` with every change of a rule matching them (a rule matches a
        camera filter when it applies to that camera before or after the change), whoever made
        it; returns the function that unsubscribes."""
        sub = _Subscription(callback, camera, rule, on_rule)
        self._subscribers.append(sub)

        def unsubscribe() -> None:
            if sub in self._subscribers:
                self._subscribers.remove(sub)

        return unsubscribe

    # --- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Publish the initial state, then check rules every tick until :meth:`stop`."""
        self._end_leftover_events()
        self._publish_discovery()
        for rule in self._store.all():
            self._publish_rule_states(rule.spec)
        link_task = None if self._link is None else asyncio.create_task(self._link.run())
        last_prune = last_stats = self._clock()
        try:
            while not self._stopping.is_set():
                now = self._clock()
                self._sync_cameras(now)
                await self._check_due(now)
                if now - last_prune >= PRUNE_EVERY_S:
                    last_prune = now
                    await asyncio.to_thread(
                        self._history.prune,
                        now,
                        retention_s=self._retention_s,
                        max_bytes=self._history_max_bytes,
                    )
                if now - last_stats >= self._stats_interval_s:
                    last_stats = now
                    self._publish_stats()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=self._tick_s)
            for task in list(self._describing):
                task.cancel()
            now = self._clock()
            for state in list(self._states.values()):
                for lc in state.close(now, "shutdown"):
                    self._emit(lc)
        finally:
            if self._link is not None and link_task is not None:
                await self._drain_outbox(3.0)
                await self._link.stop()
                await link_task
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def stop(self) -> None:
        self._stopping.set()

    async def _drain_outbox(self, timeout_s: float) -> None:
        assert self._link is not None
        deadline = time.monotonic() + timeout_s
        while (
            self._link.state == "online"
            and self._link.status().outbox
            and (time.monotonic() < deadline)
        ):
            await asyncio.sleep(0.05)

    def _end_leftover_events(self) -> None:
        now = self._clock()
        for stored in self._history.open_events():
            state = RuleState(stored.record.rule, stored.record.camera, event=stored.record)
            for lc in state.close(now, "restart"):
                self._emit(lc)

    def _state(self, rule: str, camera: str) -> RuleState:
        key = (rule, camera)
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = RuleState(rule, camera)
        return state

    def _sync_cameras(self, now: float) -> None:
        for view in self._board.views():
            current = (view.state, view.reason)
            if self._camera_states.get(view.name) == current:
                continue
            self._camera_states[view.name] = current
            if self._link is not None:
                payload = json.dumps({"state": view.state, "reason": view.reason, "since": now})
                self._link.set_retained(self._topics.camera_state(view.name), payload.encode())
            if view.state != "online":
                for (_, camera), state in list(self._states.items()):
                    if camera == view.name:
                        for lc in state.close(now, g.CAMERA_OFFLINE):
                            self._emit(lc)

    async def _check_due(self, now: float) -> None:
        rules = [r.spec for r in self._store.all()]
        cameras = list(self._board.names)
        if not cameras:
            return
        online = {v.name for v in self._board.views() if v.state == "online"}
        for i in range(len(cameras)):
            camera = cameras[(self._turn + i) % len(cameras)]
            now = self._clock() if i else now  # an engine batch may have taken a while
            due = [
                spec
                for spec in rules
                if spec.applies_to(camera)
                and now - self._last_check.get((spec.name, camera), -1e18) >= spec.check_interval_s
            ]
            if not due:
                continue
            batch = await self._gate(camera, due, now, camera in online)
            if batch:
                await self._ask(camera, batch, now)
        self._turn = (self._turn + 1) % len(cameras)

    async def _gate(
        self, camera: str, due: list[RuleSpec], now: float, online: bool
    ) -> list[RuleSpec]:
        batch: list[RuleSpec] = []
        for spec in due:
            key = (spec.name, camera)
            last = self._last_check.get(key)
            self._last_check[key] = now
            state = self._state(spec.name, camera)
            reason = None
            if spec.paused:
                reason = g.PAUSED
            elif not spec.is_active_at(now, self._tz):
                reason = g.INACTIVE_HOURS
            elif not online:
                reason = g.CAMERA_OFFLINE
            else:
                frames, share = self._motion_since(key, last)
                reason = g.motion_gate(frames, share, spec.gates.motion)
                if reason is None and spec.gates.person:
                    found = await self._person_present(camera)
                    reason = None if found else g.PERSON
            if reason is None:
                batch.append(spec)
                continue
            self.counters.count(spec.name, reason)
            if reason == g.CAMERA_OFFLINE:
                lcs = state.close(now, g.CAMERA_OFFLINE)
            else:
                lcs = state.observe(Gated(now, reason), spec, self._tz)
            for lc in lcs:
                self._emit(lc)
        return batch

    def _motion_since(self, key: tuple[str, str], last: float | None) -> tuple[int, float | None]:
        """Frames of ``key``'s camera since that rule's last check there, and their largest
        changed share (see :class:`~.gates.MotionLog`)."""
        camera = key[1]
        if self.motion.latest_wall(camera) is not None:
            frames, share, mark = self.motion.motion_since(camera, self._motion_mark.get(key))
            self._motion_mark[key] = mark
            return frames, share
        frame = self._board.latest_frame(camera)  # no cacher reports: new frames are motion
        if frame is None or (last is not None and frame.wall_time <= last):
            return 0, 0.0
        return 1, None

    async def _person_present(self, camera: str) -> bool:
        frame = self._board.latest_frame(camera)
        if frame is None:
            return False
        cached = self._person_cache.get(camera)
        if cached is not None and cached[0] == frame.seq:
            return cached[1].present
        if self._person is None:
            self._person = g.PersonDetector()
        result = await asyncio.to_thread(self._person.detect, frame.image)
        self._person_cache[camera] = (frame.seq, result)
        return result.present

    async def _ask(self, camera: str, batch: list[RuleSpec], now: float) -> None:
        questions = [
            RuleQuestion(s.name, s.condition, now - max(2 * s.check_interval_s, 10.0))
            for s in batch
        ]
        loop = asyncio.get_running_loop()
        try:
            answers = await loop.run_in_executor(
                self._executor, self._engine.check, camera, questions
            )
            if len(answers) != len(questions):
                raise ValueError(f"engine answered {len(answers)} of {len(questions)} questions")
        except Exception as exc:
            for spec in batch:
                self.counters.count(spec.name, g.ENGINE_ERROR)
            if not self._engine_failing:
                self._engine_failing = True
                log.warning("rule checks failing on camera %s: %s", camera, exc)
            return
        if self._engine_failing:
            self._engine_failing = False
            log.info("rule checks work again")
        t = self._clock()
        for spec, answer in zip(batch, answers, strict=True):
            self.counters.count(spec.name, g.ASKED)
            score = min(1.0, max(0.0, float(answer.score)))
            obs = Scored(t, score, tuple(answer.moments))
            # the rule may have changed while the engine worked: use its current form
            current = self._current_spec(spec.name)
            if current is None or not current.applies_to(camera):
                continue
            for lc in self._state(spec.name, camera).observe(obs, current, self._tz):
                self._emit(lc)

    def _current_spec(self, name: str) -> RuleSpec | None:
        """The rule as it is now; None once it was removed (while its check ran)."""
        try:
            return self._store.get(name).spec
        except UnknownRule:
            return None

    # --- lifecycle out -----------------------------------------------------------------------

    def _emit(self, lc: Lifecycle) -> None:
        after = lc.after
        if lc.type == "start":
            after = self._take_snapshot(lc)
            lc = Lifecycle(lc.type, lc.t, lc.before, after)
        try:
            self._history.record(after, lc.type)
        except Exception as exc:
            log.error("event %s not stored in the history: %s", after.id, exc)
        if self._link is not None:
            self._publish_lifecycle(lc)
        for sub in list(self._subscribers):
            if sub.camera not in (None, after.camera) or sub.rule not in (None, after.rule):
                continue
            try:
                sub.callback(lc)
            except Exception:
                log.exception("alert subscriber failed")
        if lc.type == "start":
            spec = self._current_spec(after.rule)
            if spec is not None:
                task = asyncio.get_running_loop().create_task(self._describe(lc, spec))
                self._describing.add(task)
                task.add_done_callback(self._describing.discard)

    def _take_snapshot(self, lc: Lifecycle) -> EventRecord:
        after = lc.after
        try:
            shot = self._board.snapshot_jpeg(after.camera)
        except Exception as exc:
            log.warning("no snapshot for event %s: %s", after.id, exc)
            shot = None
        if shot is None:
            return after
        key = snapshot_key(after.id)
        try:
            self._snapshots.put(key, shot[1])
        except Exception as exc:
            log.warning("snapshot of event %s not stored: %s", after.id, exc)
            return after
        state = self._states.get((after.rule, after.camera))
        if state is not None:
            state.annotate(after.id, lc.t, snapshot=key)
        if self._link is not None:
            self._link.set_retained(self._topics.rule_snapshot(after.camera, after.rule), shot[1])
            self._link.set_retained(self._topics.camera_snapshot(after.camera), shot[1])
        return replace(after, snapshot=key)

    def _publish_lifecycle(self, lc: Lifecycle) -> None:
        assert self._link is not None
        after = lc.after
        message = self.event_message(lc)
        self._link.publish_event(self._topics.events, json.dumps(message).encode())
        entity = {
            "event_type": lc.type,
            "id": after.id,
            "score": round(after.score, 4),
            "description": after.description,
        }
        topic = self._topics.rule_event(after.camera, after.rule)
        self._link.publish_event(topic, json.dumps(entity).encode())
        if lc.type != "update":
            on = b"ON" if lc.type == "start" else b"OFF"
            self._link.set_retained(self._topics.rule_state(after.camera, after.rule), on)

    async def _describe(self, lc: Lifecycle, spec: RuleSpec) -> None:
        loop = asyncio.get_running_loop()
        event = lc.after
        try:
            text = await loop.run_in_executor(
                self._executor, self._engine.describe, event.camera, event, spec.condition
            )
        except Exception as exc:
            self.describe_failures += 1
            log.warning("no description for event %s: %s", event.id, exc)
            return
        text = " ".join(str(text).split())[:DESCRIPTION_MAX]
        if not text:
            return
        state = self._states.get((event.rule, event.camera))
        lcs = [] if state is None else state.annotate(event.id, self._clock(), description=text)
        if lcs:
            for step in lcs:
                self._emit(step)
            return
        stored = self._history.get(event.id)  # ended meanwhile: keep it in the history only
        if stored is not None:
            self._history.record(replace(stored.record, description=text), stored.type)

    # --- rules changing at run time ------------------------------------------------------------

    def _rule_changed(self, kind: ChangeKind, before: Rule | None, after: Rule | None) -> None:
        rule = after or before
        if rule is None:
            return
        now, name, cameras = self._clock(), rule.name, self._board.names
        old_cams = set(before.spec.cameras_among(cameras)) if before is not None else set()
        new_cams = set(after.spec.cameras_among(cameras)) if after is not None else set()
        closing = old_cams if kind in ("pause", "remove") else old_cams - new_cams
        for camera in sorted(closing):
            state = self._states.get((name, camera))
            if state is not None:
                for lc in state.close(now, "paused" if kind == "pause" else "removed"):
                    self._emit(lc)
        for camera in sorted(old_cams - new_cams):
            self._states.pop((name, camera), None)
            self._last_check.pop((name, camera), None)
            self._motion_mark.pop((name, camera), None)
            if self._link is not None:
                self._link.set_retained(self._topics.rule_state(camera, name), None)
                self._link.set_retained(self._topics.rule_snapshot(camera, name), None)
        if kind == "remove":
            self.counters.forget(name)
        if kind in ("update", "resume"):
            for camera in new_cams:
                self._last_check.pop((name, camera), None)  # check the new form soon
                self._motion_mark.pop((name, camera), None)
        if after is not None:
            self._publish_rule_states(after.spec)
        self._publish_discovery()
        self._tell_watchers(kind, rule, old_cams | new_cams)

    def _tell_watchers(self, kind: ChangeKind, rule: Rule, cameras: set[str]) -> None:
        for sub in list(self._subscribers):
            if sub.on_rule is None or sub.rule not in (None, rule.name):
                continue
            if sub.camera is not None and sub.camera not in cameras:
                continue
            try:
                sub.on_rule(kind, rule)
            except Exception:
                log.exception("alert rule watcher failed")

    def _publish_rule_states(self, spec: RuleSpec) -> None:
        if self._link is None:
            return
        for camera in spec.cameras_among(self._board.names):
            state = self._states.get((spec.name, camera))
            on = state is not None and state.event is not None
            self._link.set_retained(
                self._topics.rule_state(camera, spec.name), b"ON" if on else b"OFF"
            )

    def _publish_discovery(self) -> None:
        if not self._discovery or self._link is None:
            return
        cameras = self._board.names
        pairs = [
            (r.name, camera) for r in self._store.all() for camera in r.spec.cameras_among(cameras)
        ]
        current = platforms(device_config(self._topics, self._device, cameras, pairs))
        for cid, platform in self._published_platforms.items():
            if cid not in current:
                self._removed_components[cid] = platform
        for cid in current:
            self._removed_components.pop(cid, None)
        # Home Assistant removes a component when the retained config lists it by platform
        # only; keep announcing the newest removals (bounded: rule churn must not grow it)
        while len(self._removed_components) > REMOVED_COMPONENTS_KEPT:
            del self._removed_components[next(iter(self._removed_components))]
        payload = device_config(
            self._topics, self._device, cameras, pairs, removed=self._removed_components
        )
        self._published_platforms = current
        self._link.set_retained(
            self._topics.discovery(self._device.node_id), json.dumps(payload).encode()
        )

    def _check_rule(self, spec: RuleSpec) -> None:
        if spec.cameras == "all":
            return
        unknown = [c for c in spec.cameras if c not in self._board.names]
        if unknown:
            message = f"no camera named {unknown[0]!r}; cameras: {', '.join(self._board.names)}"
            raise InvalidRule(f"cameras: {message}", (("cameras", message),))

    def _on_mqtt_message(self, topic: str, payload: bytes) -> None:
        if topic != self._topics.command or self._link is None:
            return
        reply = self.commands.handle(payload)
        self._link.publish(self._topics.result, json.dumps(reply).encode(), qos=1)

    # --- reading (for the server) ---------------------------------------------------------------

    @property
    def history(self) -> EventHistory:
        return self._history

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(self._board.names)

    def snapshot(self, event_id: str) -> bytes | None:
        """The JPEG of an event's snapshot, or None (no such event, or it has none). Blocks on
        disk: call it off the event loop."""
        stored = self._history.get(event_id)
        if stored is None or stored.record.snapshot is None:
            return None
        return self._snapshots.get(stored.record.snapshot)

    def mqtt_state(self) -> tuple[str, str]:
        """(state, reason) of the MQTT connection; ``disabled`` without a broker configured."""
        if self._link is None:
            return "disabled", "no mqtt section in the config"
        status = self._link.status()
        return status.state, status.reason

    @staticmethod
    def event_message(lc: Lifecycle) -> dict[str, object]:
        """The JSON of a lifecycle step as published on ``PREFIX/events``."""
        return {
            "type": lc.type,
            "id": lc.after.id,
            "time": lc.t,
            "before": None if lc.before is None else lc.before.to_json(),
            "after": lc.after.to_json(),
        }

    # --- status --------------------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        """For readiness detail and metrics."""
        return {
            "mqtt": None if self._link is None else self._link.status().to_json(),
            "rules": len(self._store.all()),
            "open_events": sum(1 for s in self._states.values() if s.event is not None),
            "gates": self.counters.snapshot(),
            "describe_failures": self.describe_failures,
        }

    def _publish_stats(self) -> None:
        if self._link is None:
            return
        body = {**self.status(), "uptime_s": round(self._clock() - self._started, 1)}
        self._link.publish(self._topics.stats, json.dumps(body).encode())
