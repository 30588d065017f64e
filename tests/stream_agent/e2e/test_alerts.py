"""Alerts end to end: the daemon as a process, the shared clip replayed live, the tiny LLaVA
model, a real Mosquitto, real MQTT, WebSocket and HTTP clients.

The rule is gated by the HOG person detector with the lowest threshold the rules allow, so the
model's check (random weights: its yes/no is noise) always passes and the person gate decides:
an event starts when a person is in view and ends on the first check that finds none.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from PIL import Image
from websockets.exceptions import ConnectionClosed

from tests.support.daemon import (
    TOKEN,
    DaemonProcess,
    aget,
    client,
    metric,
    write_config,
)
from tests.support.mosquitto import Collector, Mosquitto, mosquitto_problem
from tests.support.ws import recv, send

P = "stream_agent"
CAMERA = "lobby"
RULE = "person"
MIN_DURATION_S = 2.0
COOLDOWN_S = 4.0
PERSON_RULE = {
    "name": RULE,
    "cameras": [CAMERA],
    "condition": "Is a person in the room?",
    "check_interval_s": 1,
    "min_duration_s": MIN_DURATION_S,
    "cooldown_s": COOLDOWN_S,
    "threshold": 1e-9,
    "gates": {"person": True, "motion": None},
}

pytestmark = pytest.mark.skipif(mosquitto_problem() is not None, reason=str(mosquitto_problem()))


def _events(col: Collector) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in col.on(f"{P}/events")]


def _steps(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(id, type) in order, duplicates (at-least-once delivery) removed."""
    seen: list[tuple[str, str]] = []
    for e in events:
        key = (e["id"], e["type"])
        if key not in seen:
            seen.append(key)
    return seen


class Pushes:
    """Collects the ``event`` pushes of a WebSocket subscription in the background."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self.other: list[dict[str, Any]] = []
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._read()

    async def _read(self) -> None:
        while True:
            message = await recv(self.ws, timeout=300)
            if message["type"] == "event":
                self.events.append({**message["event"], "_seen": time.time()})
            else:
                self.other.append(message)

    async def reply(self, kind: str, request_id: str, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.other:
                if m["type"] == kind and m.get("id") == request_id:
                    self.other.remove(m)
                    return m
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {kind} {request_id}: {self.other[-5:]}")

    def close(self) -> None:
        self._task.cancel()


async def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def _check_lifecycle(events: list[dict[str, Any]]) -> None:
    """Every end follows its start, an id starts once, cooldown between end and next start,
    and a start comes at least min_duration after the run's first yes."""
    started: dict[str, dict[str, Any]] = {}
    last_end: float | None = None
    for e in events:
        after = e["after"]
        if e["type"] == "start":
            assert after["id"] not in started
            started[after["id"]] = after
            assert e["time"] - after["start_time"] >= MIN_DURATION_S - 0.05
            if last_end is not None:
                assert after["start_time"] - last_end >= COOLDOWN_S - 0.05
        elif e["type"] == "end":
            assert after["id"] in started
            assert after["end_time"] >= after["start_time"]
            last_end = after["end_time"]


async def test_alerts_through_the_real_parts(
    tmp_path: Path, tiny_llava: Path, shared_clip: Path
) -> None:
    broker = Mosquitto(tmp_path / "broker", persistence=True)
    broker.start()
    config = write_config(
        tmp_path / "daemon.yaml",
        cameras=[{"name": CAMERA, "path": str(shared_clip), "fps": 1}],
        model=tiny_llava,
        store=tmp_path / "store",
        mqtt={
            "host": broker.host,
            "port": broker.port,
            "keepalive_s": 5,
            "backoff": {"initial_s": 0.2, "max_s": 1.0},
        },
        alerts={"rules": [PERSON_RULE], "tick_s": 0.1},
    )
    daemon = DaemonProcess(["--config", str(config)], tmp_path / "daemon.log")
    col = Collector(broker, [f"{P}/#", "homeassistant/#"], client_id="e2e-sub", persistent=True)
    try:
        async with col:
            daemon.start()
            async with client(daemon) as ws:
                await recv(ws)  # hello
                pushes = Pushes(ws)
                await send(ws, {"type": "subscribe", "id": "all", "camera": CAMERA})
                await pushes.reply("subscribed", "all")
                await col.wait_for(lambda ms: any(m.topic == f"{P}/available" for m in ms))
                assert col.on(f"{P}/available")[-1].payload == b"online"

                # a rule added over MQTT shows in discovery and in the WebSocket rule list
                parcel = {
                    "name": "parcel",
                    "cameras": [CAMERA],
                    "condition": "Is there a parcel on the table?",
                    "paused": True,
                }
                async with aiomqtt.Client(broker.host, broker.port) as mq:
                    await mq.publish(
                        f"{P}/rules/set",
                        json.dumps({"id": "c1", "op": "add", "rule": parcel}).encode(),
                        qos=1,
                    )
                await col.wait_for(lambda ms: bool(col.on(f"{P}/rules/result")))
                assert json.loads(col.on(f"{P}/rules/result")[-1].payload)["ok"] is True
                disc = f"homeassistant/device/{P}/config"
                await col.wait_for(lambda ms: any(b"parcel" in m.payload for m in col.on(disc)), 10)
                cmps = json.loads(col.on(disc)[-1].payload)["cmps"]
                assert f"{P}_{CAMERA}_parcel" in {c.get("unique_id") for c in cmps.values()}
                await send(ws, {"type": "rule", "id": "r1", "command": {"op": "list"}})
                listed = await pushes.reply("rule_result", "r1")
                assert [r["name"] for r in listed["rules"]] == [RULE, "parcel"]

                # the person rule fires when a person enters and ends after
                await col.wait_for(
                    lambda ms: any(e["type"] == "end" for e in _events(col)), timeout_s=60
                )
                first = _events(col)
                start = next(e for e in first if e["type"] == "start")
                end = next(e for e in first if e["type"] == "end")
                assert start["id"] == end["id"] and start["after"]["rule"] == RULE
                assert end["after"]["end_reason"] == "cleared"
                snap = col.on(f"{P}/{CAMERA}/{RULE}/snapshot")
                assert snap and Image.open(io.BytesIO(snap[-1].payload)).format == "JPEG"
                assert b"ON" in [m.payload for m in col.on(f"{P}/{CAMERA}/{RULE}")]
                entity = [json.loads(m.payload) for m in col.on(f"{P}/{CAMERA}/{RULE}/event")]
                assert [x["event_type"] for x in entity][:1] == ["start"]
                await _wait(lambda: (start["id"], "end") in _steps(pushes.events), 10, "the WS end")
                assert _steps(pushes.events)[0] == (start["id"], "start")

                # the broker goes away for a few seconds: what is raised meanwhile arrives in order
                before_outage = len(pushes.events)
                broker.kill()
                outage_start = time.time()
                await _wait(lambda: len(pushes.events) > before_outage, 30, "a step meanwhile")
                await asyncio.sleep(1.0)
                outage_end = time.time()
                broker.start()
                during = [
                    (e["id"], e["type"])
                    for e in pushes.events
                    if outage_start <= e["_seen"] <= outage_end
                ]
                assert during, "no lifecycle step during the outage"
                await col.wait_for(
                    lambda ms: set(during) <= set(_steps(_events(col))), timeout_s=30
                )
                mqtt_steps = _steps(_events(col))
                ws_steps = _steps(pushes.events)
                assert [s for s in mqtt_steps if s in ws_steps] == [
                    s for s in ws_steps if s in mqtt_steps
                ]
                assert set(ws_steps[: ws_steps.index(during[-1]) + 1]) <= set(mqtt_steps)
                _check_lifecycle(_events(col))
                _check_lifecycle([e for e in pushes.events])

                metrics = (await aget(f"{daemon.http_url}/metrics", TOKEN)).text
                assert (metric(metrics, "stream_agent_alert_rule_checks_total", rule=RULE) or 0) > 0
                started = metric(
                    metrics, "stream_agent_alert_events_total", rule=RULE, type="start"
                )
                assert (started or 0) >= 1
                assert metric(metrics, "stream_agent_mqtt_connection_state", state="online") == 1
                ready = await aget(f"{daemon.http_url}/readyz")
                assert "mqtt online" in ready.text
                pushes.close()
            assert daemon.stop() == 0
            await col.wait_for(
                lambda ms: col.on(f"{P}/available")[-1].payload == b"offline", timeout_s=10
            )
            ids_before = {e["id"] for e in _events(col)}

            # a restarted daemon still lists the earlier events and serves their snapshots
            daemon.start()
            listed_http = await aget(f"{daemon.http_url}/events?camera={CAMERA}&limit=1000", TOKEN)
            assert listed_http.status == 200
            stored = {e["id"]: e for e in json.loads(listed_http.body)["events"]}
            assert ids_before <= set(stored)
            assert all(stored[i]["active"] is False for i in ids_before)
            shot = await aget(f"{daemon.http_url}/events/{start['id']}/snapshot.jpg", TOKEN)
            assert shot.status == 200
            assert Image.open(io.BytesIO(shot.body)).format == "JPEG"
            # kept in the memory's on-disk frame store, beside the answers' evidence frames
            kept = tmp_path / "store" / "frames" / "events" / f"event-{start['id']}.jpg"
            assert kept.read_bytes() == shot.body
            async with client(daemon) as ws:
                await recv(ws)
                await send(ws, {"type": "rule", "id": "r2", "command": {"op": "list"}})
                while (reply := await recv(ws))["type"] != "rule_result":
                    pass
                assert [r["name"] for r in reply["rules"]] == [RULE, "parcel"]
            assert daemon.stop() == 0
    finally:
        daemon.close()
        broker.kill()


async def test_a_broker_that_refuses_us_blocks_nothing(
    tmp_path: Path, tiny_llava: Path, short_clip: Path
) -> None:
    """Wrong credentials: MQTT is ``refused``, while frames, memory, answers and readiness go
    on; a rule's events still reach the history and WebSocket subscribers."""
    broker = Mosquitto(tmp_path / "broker", users={"stream-agent": "right"})
    broker.start()
    rule = {**PERSON_RULE, "gates": {"person": False, "motion": None}, "min_duration_s": 0}
    config = write_config(
        tmp_path / "daemon.yaml",
        cameras=[{"name": CAMERA, "path": str(short_clip), "fps": 2}],
        model=tiny_llava,
        store=tmp_path / "store",
        mqtt={
            "host": broker.host,
            "port": broker.port,
            "username": "stream-agent",
            "password_env": "E2E_MQTT_PASSWORD",
            "backoff": {"initial_s": 0.2, "max_s": 1.0},
        },
        alerts={"rules": [rule], "tick_s": 0.1},
    )
    daemon = DaemonProcess(
        ["--config", str(config)], tmp_path / "daemon.log", env={"E2E_MQTT_PASSWORD": "wrong"}
    )
    try:
        daemon.start()
        async with client(daemon) as ws:
            await recv(ws)
            await send(ws, {"type": "subscribe", "id": "s"})
            events = []
            async with asyncio.timeout(60):
                while not any(e["event"]["type"] == "start" for e in events):
                    message = await recv(ws)
                    if message["type"] == "event":
                        events.append(message)
            await send(ws, {"type": "status", "id": "st"})
            while (reply := await recv(ws))["type"] != "status":
                pass
            assert reply["ready"] is True
            mqtt = reply["alerts"]["mqtt"]  # refused, or retrying after a refusal
            assert mqtt["state"] in ("refused", "connecting"), mqtt
            assert "refused" in mqtt["state"] + mqtt["reason"], mqtt
            assert reply["cameras"][0]["memory"]["blocks"] > 0
            await send(ws, {"type": "ask", "id": "q", "question": "What happens?"})
            while (answer := await recv(ws))["type"] not in ("answer", "error"):
                pass
            assert answer["type"] == "answer", answer
        ready = await aget(f"{daemon.http_url}/readyz")
        assert ready.status == 200 and "refused" in ready.text.partition("; mqtt")[2]
        listed = await aget(f"{daemon.http_url}/events", TOKEN)
        assert events[0]["event"]["id"] in {e["id"] for e in json.loads(listed.body)["events"]}
        assert "wrong" not in daemon.log_text()  # the password never reaches the log
        assert daemon.stop() == 0
    finally:
        daemon.close()
        broker.kill()
