"""The alerts service end to end against a real Mosquitto, with a small fake engine and board
(the real model path is wired in the next phase)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from stream_agent.alerts.config import BackoffConfig, MqttConfig, MqttSecrets
from stream_agent.alerts.discovery import DeviceInfo
from stream_agent.alerts.history import EventHistory
from stream_agent.alerts.mqtt import MqttLink
from stream_agent.alerts.outbox import Outbox
from stream_agent.alerts.rules import RuleSpec, RuleStore
from stream_agent.alerts.service import AlertService, CheckAnswer, EventRecordLike, RuleQuestion
from stream_agent.alerts.snapshots import FileSnapshotStore
from stream_agent.alerts.state import EventRecord, Lifecycle
from tests.stream_agent.alerts.test_gates import CLIP, EMPTY_FRAMES, PERSON_FRAMES, clip_frames
from tests.support.mosquitto import Collector, Mosquitto

FAST = BackoffConfig(initial_s=0.1, max_s=0.5, jitter=0.2)
P = "stream_agent"


@dataclass(frozen=True)
class Frame:
    seq: int
    wall_time: float
    image: npt.NDArray[np.uint8]


@dataclass(frozen=True)
class View:
    name: str
    state: str
    reason: str = ""


class Board:
    def __init__(self, names: Sequence[str]) -> None:
        self._names = tuple(names)
        self.states = dict.fromkeys(names, "online")
        self.frames: dict[str, Frame] = {}
        self._seq = 0

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    def views(self) -> list[View]:
        return [View(n, self.states[n]) for n in self._names]

    def latest_frame(self, name: str) -> Frame | None:
        return self.frames.get(name)

    def snapshot_jpeg(self, name: str, quality: int = 85) -> tuple[Frame, bytes] | None:
        frame = self.frames.get(name)
        if frame is None:
            return None
        out = io.BytesIO()
        Image.fromarray(frame.image).save(out, format="JPEG", quality=quality)
        return frame, out.getvalue()

    def push(self, name: str, image: npt.NDArray[np.uint8] | None = None) -> Frame:
        self._seq += 1
        img = image if image is not None else np.full((64, 96, 3), self._seq % 255, np.uint8)
        frame = Frame(self._seq, time.time(), img)
        self.frames[name] = frame
        return frame


@dataclass
class Engine:
    scores: dict[str, float] = field(default_factory=dict)
    calls: list[tuple[str, list[str]]] = field(default_factory=list)
    describe_error: Exception | None = None
    describe_delay_s: float = 0.2
    lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, camera: str, questions: Sequence[RuleQuestion]) -> list[CheckAnswer]:
        assert threading.current_thread() is not threading.main_thread()
        with self.lock:
            self.calls.append((camera, [q.rule for q in questions]))
            now = time.time()
            return [CheckAnswer(self.scores.get(q.rule, 0.0), ((now - 2, now),)) for q in questions]

    def describe(self, camera: str, event: EventRecordLike, condition: str) -> str:
        time.sleep(self.describe_delay_s)
        if self.describe_error is not None:
            raise self.describe_error
        return f"  A person stands at the {camera}.\n"


@dataclass
class Rig:
    service: AlertService
    board: Board
    engine: Engine
    history: EventHistory
    snapshots: FileSnapshotStore
    link: MqttLink
    seen: list[Lifecycle]
    share: dict[str, float]


def rule(name: str = "person", **kw: object) -> RuleSpec:
    return RuleSpec.parse(
        {
            "name": name,
            "condition": "Is a person in view?",
            "check_interval_s": 0.5,
            "cooldown_s": 0,
            **kw,
        }
    )


@contextlib.asynccontextmanager
async def rig(
    tmp: Path,
    broker: Mosquitto,
    rules: Sequence[RuleSpec],
    *,
    token: str | None = None,
    engine: Engine | None = None,
    feed: bool = True,
    stats_interval_s: float = 60.0,
) -> AsyncIterator[Rig]:
    cfg = MqttConfig(host=broker.host, port=broker.port, backoff=FAST)
    link = MqttLink(cfg, Outbox(tmp / "outbox.sqlite"), secrets=MqttSecrets(command_token=token))
    snaps = FileSnapshotStore(tmp / "frames")
    history = EventHistory(tmp / "events.sqlite", snaps)
    board = Board(["door", "yard"])
    engine = engine or Engine()
    service = AlertService(
        store=RuleStore(rules, tmp / "rules.json"),
        board=board,
        engine=engine,
        history=history,
        snapshots=snaps,
        link=link,
        device=DeviceInfo(node_id=cfg.effective_node_id),
        command_token=token,
        tick_s=0.05,
        stats_interval_s=stats_interval_s,
    )
    seen: list[Lifecycle] = []
    service.subscribe(seen.append, camera="door")
    share = {"door": 0.5, "yard": 0.5}

    async def feeder() -> None:
        while True:
            for cam in board.names:
                if board.states[cam] == "online":
                    f = board.push(
                        cam,
                        board.frames[cam].image
                        if cam in board.frames and share[cam] == 0
                        else None,
                    )
                    service.note_frame(cam, f.wall_time, share[cam])
            await asyncio.sleep(0.1)

    feed_task = asyncio.create_task(feeder()) if feed else None
    task = asyncio.create_task(service.run())
    try:
        yield Rig(service, board, engine, history, snaps, link, seen, share)
    finally:
        await service.stop()
        await asyncio.wait_for(task, 15)
        if feed_task is not None:
            feed_task.cancel()
        history.close()


def events(col: Collector) -> list[dict]:
    return [json.loads(m.payload) for m in col.on(f"{P}/events")]


async def test_a_rule_fires_start_update_end_with_snapshot_and_description(
    broker: Mosquitto, tmp_path: Path
) -> None:
    topics = [
        f"{P}/events",
        f"{P}/door/person",
        f"{P}/door/person/snapshot",
        f"{P}/door/person/event",
        f"{P}/door/state",
        f"{P}/stats",
    ]
    async with (
        Collector(broker, topics) as col,
        rig(tmp_path, broker, [rule(cameras=["door"])]) as r,
    ):
        r.engine.scores["person"] = 0.9
        await col.wait_for(
            lambda m: any(e["type"] == "update" and e["after"]["description"] for e in events(col))
        )
        r.engine.scores["person"] = 0.1
        await col.wait_for(lambda m: any(e["type"] == "end" for e in events(col)))
        evs = events(col)
        assert [e["type"] for e in evs] == ["start", "update", "end"]
        assert len({e["id"] for e in evs}) == 1
        start, update, end = evs
        assert (
            start["before"] is None and start["after"]["active"] and start["after"]["has_snapshot"]
        )
        assert start["after"]["description"] is None  # the start does not wait for the model
        assert update["after"]["description"] == "A person stands at the door."
        assert end["after"]["end_time"] is not None and end["after"]["end_reason"] == "cleared"
        assert end["before"]["description"] == "A person stands at the door."
        assert [m.payload for m in col.on(f"{P}/door/person")][-2:] == [b"ON", b"OFF"]
        snap = col.on(f"{P}/door/person/snapshot")[-1].payload
        assert snap[:2] == b"\xff\xd8"  # JPEG
        entity = [json.loads(m.payload)["event_type"] for m in col.on(f"{P}/door/person/event")]
        assert entity == ["start", "update", "end"]
        assert json.loads(col.on(f"{P}/door/state")[-1].payload)["state"] == "online"
        stored = r.history.get(start["id"])
        assert stored is not None and stored.type == "end"
        assert stored.record.description == "A person stands at the door."
        assert stored.record.snapshot is not None
        assert r.snapshots.get(stored.record.snapshot) == snap
        assert [lc.type for lc in r.seen] == ["start", "update", "end"]
        assert all(cam == "door" for cam, _ in r.engine.calls)  # the rule watches the door only


async def test_a_still_scene_costs_no_model_call(broker: Mosquitto, tmp_path: Path) -> None:
    async with rig(tmp_path, broker, [rule(cameras=["door"])]) as r:
        r.share["door"] = 0.0
        await asyncio.sleep(0.3)
        r.engine.calls.clear()
        await asyncio.sleep(1.5)
        assert r.engine.calls == []
        assert r.service.counters.snapshot()["person"]["motion"] >= 2
        r.share["door"] = 0.4
        await asyncio.sleep(1.2)
        assert r.engine.calls


async def test_rules_of_one_camera_go_to_the_engine_as_one_batch(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async with rig(tmp_path, broker, [rule("a"), rule("b"), rule("c", cameras=["yard"])]) as r:
        await asyncio.sleep(1.2)
        batches = {cam: names for cam, names in r.engine.calls}
        assert sorted(batches["door"]) == ["a", "b"]
        assert sorted(batches["yard"]) == ["a", "b", "c"]


@pytest.mark.skipif(not CLIP.exists(), reason="shared clip absent")
async def test_the_person_gate_asks_only_when_hog_sees_someone(
    broker: Mosquitto, tmp_path: Path
) -> None:
    frames = clip_frames()
    async with rig(
        tmp_path, broker, [rule(cameras=["door"], gates={"person": True})], feed=False
    ) as r:
        for _ in range(4):
            f = r.board.push("door", frames[EMPTY_FRAMES[1]])
            r.service.note_frame("door", f.wall_time, 0.5)
            await asyncio.sleep(0.5)
        assert r.engine.calls == []
        assert r.service.counters.snapshot()["person"]["person"] >= 2
        for _ in range(4):
            f = r.board.push("door", frames[PERSON_FRAMES[3]])
            r.service.note_frame("door", f.wall_time, 0.5)
            await asyncio.sleep(0.5)
        assert r.engine.calls and r.service.counters.snapshot()["person"]["asked"] >= 1


async def test_commands_over_mqtt_and_discovery(broker: Mosquitto, tmp_path: Path) -> None:
    disc = "homeassistant/device/stream_agent/config"
    topics = [f"{P}/rules/result", disc, f"{P}/yard/intruder"]
    async with Collector(broker, topics) as col, rig(tmp_path, broker, [rule()], token="tok") as r:
        import aiomqtt

        def config() -> dict:
            return json.loads(col.on(disc)[-1].payload)

        await col.wait_for(lambda m: bool(col.on(disc)))
        assert "stream_agent_door_person" in config()["cmps"]
        new = {
            "name": "intruder",
            "condition": "Is someone climbing the fence?",
            "cameras": ["yard"],
        }
        async with aiomqtt.Client(broker.host, broker.port) as client:

            async def command(body: dict) -> dict:
                n = len(col.on(f"{P}/rules/result"))
                await client.publish(f"{P}/rules/set", json.dumps(body).encode(), qos=1)
                await col.wait_for(lambda m: len(col.on(f"{P}/rules/result")) > n)
                return json.loads(col.on(f"{P}/rules/result")[-1].payload)

            bad = await command({"id": "1", "op": "add", "rule": new})  # no token
            assert bad == {
                "id": "1",
                "op": "add",
                "ok": False,
                "error": {
                    "code": "unauthorised",
                    "message": "missing or wrong command token",
                    "fields": [],
                },
            }
            n_configs = len(col.on(disc))
            client_raw = await command(
                {"id": "2", "op": "add", "token": "tok", "rule": {**new, "colour": 1}}
            )
            assert (
                client_raw["error"]["code"] == "bad_request"
                and "colour" in client_raw["error"]["message"]
            )
            unknown_cam = await command(
                {"id": "2b", "op": "add", "token": "tok", "rule": {**new, "cameras": ["attic"]}}
            )
            assert unknown_cam["error"]["code"] == "bad_request"
            assert "attic" in unknown_cam["error"]["message"]
            await client.publish(f"{P}/rules/set", b"\x00garbage", qos=1)
            await col.wait_for(lambda m: len(col.on(f"{P}/rules/result")) >= 4)
            assert json.loads(col.on(f"{P}/rules/result")[-1].payload)["ok"] is False
            assert len(col.on(disc)) == n_configs and "intruder" not in r.service.commands._store
            ok = await command({"id": "3", "op": "add", "token": "tok", "rule": new})
            assert ok["ok"] and ok["rule"]["name"] == "intruder"
            await col.wait_for(lambda m: "stream_agent_yard_intruder" in config()["cmps"])
            cmp = config()["cmps"]["stream_agent_yard_intruder"]
            assert cmp["p"] == "binary_sensor" and cmp["state_topic"] == f"{P}/yard/intruder"
            await col.wait_for(
                lambda m: [x.payload for x in col.on(f"{P}/yard/intruder")][-1:] == [b"OFF"]
            )
            gone = await command({"id": "4", "op": "remove", "token": "tok", "name": "intruder"})
            assert gone["ok"]
            await col.wait_for(
                lambda m: (
                    config()["cmps"].get("stream_agent_yard_intruder") == {"p": "binary_sensor"}
                )
            )
            await col.wait_for(lambda m: col.on(f"{P}/yard/intruder")[-1].payload == b"")
        # the run-time rule persisted: a restarted service would load it (it was removed here)
        assert [x.name for x in RuleStore([rule()], tmp_path / "rules.json").all()] == ["person"]


async def test_a_failing_description_never_holds_the_alert_back(
    broker: Mosquitto, tmp_path: Path
) -> None:
    engine = Engine(describe_error=RuntimeError("model fell over"), describe_delay_s=0.0)
    async with (
        Collector(broker, [f"{P}/events"]) as col,
        rig(tmp_path, broker, [rule(cameras=["door"])], engine=engine) as r,
    ):
        r.engine.scores["person"] = 0.9
        await col.wait_for(lambda m: any(e["type"] == "start" for e in events(col)))
        r.engine.scores["person"] = 0.0
        await col.wait_for(lambda m: any(e["type"] == "end" for e in events(col)))
        assert [e["type"] for e in events(col)] == ["start", "end"]
        assert r.service.describe_failures == 1


async def test_camera_going_offline_ends_its_events(broker: Mosquitto, tmp_path: Path) -> None:
    async with (
        Collector(broker, [f"{P}/events"]) as col,
        rig(tmp_path, broker, [rule(cameras=["door"])]) as r,
    ):
        r.engine.scores["person"] = 0.9
        await col.wait_for(lambda m: any(e["type"] == "start" for e in events(col)))
        r.board.states["door"] = "offline"
        await col.wait_for(lambda m: any(e["type"] == "end" for e in events(col)))
        assert events(col)[-1]["after"]["end_reason"] == "camera_offline"


async def test_restart_delivers_the_outbox_and_ends_leftover_events(
    broker: Mosquitto, tmp_path: Path
) -> None:
    broker.stop()
    async with rig(tmp_path, broker, [rule(cameras=["door"])]) as r:
        r.engine.scores["person"] = 0.9
        deadline = time.monotonic() + 10
        while not r.history.list_events():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert r.link.state in ("connecting", "offline")
    # the service ended the event at shutdown; start, its snapshot-less update and end wait
    leftover = EventRecord(id="old-1", rule="person", camera="door", start_time=1.0)
    h = EventHistory(tmp_path / "events.sqlite")
    h.record(leftover, "start")  # as if a crash had left it open
    h.close()
    assert len(Outbox(tmp_path / "outbox.sqlite")) >= 4
    broker.start()
    async with (
        Collector(broker, [f"{P}/events"]) as col,
        rig(tmp_path, broker, [rule(cameras=["door"])], feed=False),
    ):
        await col.wait_for(lambda m: sum(e["type"] == "end" for e in events(col)) >= 2)
        evs = events(col)
        first = [e for e in evs if e["id"] != "old-1"]
        assert first[0]["type"] == "start" and first[-1]["type"] == "end"
        assert first[-1]["after"]["end_reason"] == "shutdown"
        old = [e for e in evs if e["id"] == "old-1"]
        assert [e["type"] for e in old] == ["end"] and old[0]["after"]["end_reason"] == "restart"


async def test_home_assistant_coming_online_gets_discovery_and_states_again(
    broker: Mosquitto, tmp_path: Path
) -> None:
    import aiomqtt

    disc = "homeassistant/device/stream_agent/config"
    async with (
        Collector(broker, [disc, f"{P}/door/person"]) as col,
        rig(tmp_path, broker, [rule()]),
    ):
        await col.wait_for(
            lambda m: len(col.on(disc)) == 1 and len(col.on(f"{P}/door/person")) == 1
        )
        async with aiomqtt.Client(broker.host, broker.port) as ha:
            await ha.publish("homeassistant/status", b"online", qos=1)
        await col.wait_for(
            lambda m: len(col.on(disc)) == 2 and len(col.on(f"{P}/door/person")) == 2
        )
        assert col.on(disc)[0].payload == col.on(disc)[1].payload


async def test_build_alerts_from_the_config_section(broker: Mosquitto, tmp_path: Path) -> None:
    from stream_agent.alerts.build import build_alerts
    from stream_agent.alerts.config import AlertsConfig

    cfg = AlertsConfig.model_validate(
        {
            "rules": [{"name": "person", "condition": "Is a person in view?", "cameras": ["door"]}],
            "mqtt": {
                "host": broker.host,
                "port": broker.port,
                "prefix": "home/agent",
                "command_token_env": "TOKEN",
            },
            "tick_s": 0.05,
        }
    )
    board = Board(["door"])
    alerts = build_alerts(
        cfg, board=board, engine=Engine(), data_dir=tmp_path, environ={"TOKEN": "t"}
    )
    assert alerts.link is not None
    async with Collector(
        broker, ["home/agent/available", "homeassistant/device/home_agent/config"]
    ) as col:
        task = asyncio.create_task(alerts.service.run())
        await col.wait_for(lambda m: len(col.on("homeassistant/device/home_agent/config")) == 1)
        payload = json.loads(col.on("homeassistant/device/home_agent/config")[0].payload)
        assert payload["availability_topic"] == "home/agent/available"
        assert "home_agent_door_person" in payload["cmps"]
        await alerts.service.stop()
        await asyncio.wait_for(task, 10)
        await col.wait_for(lambda m: col.on("home/agent/available")[-1].payload == b"offline")
    alerts.close()
    assert {p.name for p in tmp_path.iterdir()} >= {
        "events.sqlite",
        "mqtt-outbox.sqlite",
        "event-frames",
    }
    assert alerts.service.commands.handle({"op": "list"})["error"]["code"] == "unauthorised"


async def test_broker_killed_while_events_are_raised(broker: Mosquitto, tmp_path: Path) -> None:
    """Events keep firing while the broker is away (killed, restarted 3 s later); afterwards
    every lifecycle step has arrived once, in the order the service raised them, each id's
    start before its end."""
    topics = [f"{P}/events", f"{P}/available"]
    async with (
        Collector(broker, topics, client_id="t-sub", persistent=True) as col,
        rig(tmp_path, broker, [rule(cameras=["door"])], engine=Engine(describe_delay_s=0.05)) as r,
    ):

        async def flip(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                r.engine.scores["person"] = 0.9 if r.engine.scores.get("person", 0) < 0.5 else 0.1
                await asyncio.sleep(0.6)

        await flip(2.0)
        await asyncio.sleep(1.2)  # the broker autosaves the subscriber's session every second
        broker.kill()
        await flip(3.0)
        assert r.link.status().outbox > 0
        broker.start()
        await flip(2.0)
        r.engine.scores["person"] = 0.0
        await asyncio.sleep(1.2)
        raised = [(lc.type, lc.id) for lc in r.seen]
        assert sum(t == "start" for t, _ in raised) >= 4

        def arrived() -> list[tuple[str, str]]:
            """(type, id) in arrival order; a redelivered message (at least once: the same
            bytes again) counted once."""
            seen: set[bytes] = set()
            out: list[tuple[str, str]] = []
            for m in col.on(f"{P}/events"):
                if m.payload not in seen:
                    seen.add(m.payload)
                    e = json.loads(m.payload)
                    out.append((e["type"], e["id"]))
            return out

        await col.wait_for(lambda m: len(arrived()) >= len(raised), 20)
        got = arrived()
        assert got == raised
        for event_id in {i for _, i in got}:
            steps = [t for t, i in got if i == event_id]
            assert steps[0] == "start" and steps[-1] == "end" and steps.count("end") == 1
        assert [m.payload for m in col.on(f"{P}/available")][-1] == b"online"


async def test_stats_are_published_periodically(broker: Mosquitto, tmp_path: Path) -> None:
    async with (
        Collector(broker, [f"{P}/stats"]) as col,
        rig(tmp_path, broker, [rule(cameras=["door"])], stats_interval_s=1.0),
    ):
        await col.wait_for(lambda m: len(col.on(f"{P}/stats")) >= 2, 10)
        stats = json.loads(col.on(f"{P}/stats")[-1].payload)
        assert stats["mqtt"]["state"] == "online" and stats["rules"] == 1
        assert stats["gates"]["person"]["asked"] >= 1 and stats["uptime_s"] >= 1.0
