"""The alerts' WebSocket messages and HTTP routes against a real loopback server.

The server, engine (around the fake worker), camera board and the alert service (rule store,
SQLite history, file snapshot store) are the real ones; only the model's yes/no verdicts come
from a small scripted :class:`ScriptedChecks` (the model path has its own tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from stream_agent.alerts.history import EventHistory
from stream_agent.alerts.rules import RuleSpec, RuleStore
from stream_agent.alerts.service import AlertService, CheckAnswer, EventRecordLike, RuleQuestion
from stream_agent.alerts.snapshots import FileSnapshotStore
from stream_agent.cameras import CameraBoard
from stream_agent.metrics import DaemonMetrics, Registry
from stream_agent.protocol import EventPush, parse_client_message
from tests.stream_agent.engine.fake_worker import make_frame
from tests.stream_agent.server.harness import Harness, running_server
from tests.stream_agent.server.test_http import http
from tests.support.ws import ask, recv, send

TOKEN = "alerts-s3cret"


class ScriptedChecks:
    """An AlertEngine whose verdict the test sets (``score``)."""

    def __init__(self) -> None:
        self.score = 0.0
        self.calls = 0

    def check(self, camera: str, questions: Sequence[RuleQuestion]) -> list[CheckAnswer]:
        self.calls += 1
        now = time.time()
        return [CheckAnswer(self.score, ((now - 2.0, now),)) for _ in questions]

    def describe(self, camera: str, event: EventRecordLike, condition: str) -> str:
        return "Someone is at the door."


class Alerted:
    def __init__(self, h: Harness, service: AlertService, checks: ScriptedChecks) -> None:
        self.h, self.service, self.checks = h, service, checks

    def frame(self) -> None:
        now = time.time()
        for camera in self.h.board.names:
            self.h.board.offer_frame(make_frame(camera, int(now * 10), wall=now, size=96))


@contextlib.asynccontextmanager
async def alerted(
    tmp_path: Path, *, token: str | None = None, **settings: Any
) -> AsyncIterator[Alerted]:
    metrics = DaemonMetrics(Registry())
    board = CameraBoard(("dock", "door"), metrics=metrics, evidence_max_side=64)
    for name in board.names:
        board.set_state(name, "online")
    checks = ScriptedChecks()
    snaps = FileSnapshotStore(tmp_path / "frames")
    history = EventHistory(tmp_path / "events.sqlite", snaps)
    config_rule = RuleSpec.parse(
        {
            "name": "at-door",
            "cameras": ["door"],
            "condition": "Is someone at the door?",
            "check_interval_s": 0.5,
            "cooldown_s": 0,
            "gates": {"motion": None},
        }
    )
    store = RuleStore([config_rule], tmp_path / "rules.json")
    service = AlertService(
        store=store, board=board, engine=checks, history=history, snapshots=snaps, tick_s=0.05
    )
    async with running_server(
        token=token, board=board, alerts=service, metrics=metrics, **settings
    ) as h:
        task = asyncio.create_task(service.run())
        try:
            yield Alerted(h, service, checks)
        finally:
            await service.stop()
            await task
            history.close()


async def _until(ws: Any, kind: str, timeout: float = 10.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            message = await recv(ws, timeout)
            if message["type"] == kind:
                return message


async def _fire(a: Alerted, ws: Any) -> list[dict[str, Any]]:
    """Make at-door start and end; the pushes seen on ``ws`` (subscribed beforehand)."""
    a.frame()
    a.checks.score = 0.9
    pushes = []
    async with asyncio.timeout(15):
        while True:
            a.frame()
            message = await recv(ws)
            if message["type"] != "event":
                continue
            pushes.append(message)
            kinds = [p["event"]["type"] for p in pushes]
            if "start" in kinds:
                a.checks.score = 0.0
            if "end" in kinds:
                return pushes


async def test_rule_commands_over_websocket(tmp_path: Path) -> None:
    async with alerted(tmp_path) as a, a.h.connect() as ws:
        await recv(ws)
        await send(ws, {"type": "rule", "id": "r1", "command": {"op": "list"}})
        reply = await _until(ws, "rule_result")
        assert reply["id"] == "r1" and reply["ok"] is True and reply["op"] == "list"
        assert [r["name"] for r in reply["rules"]] == ["at-door"]
        new = {"name": "parcel", "cameras": ["dock"], "condition": "Is there a parcel?"}
        await send(ws, {"type": "rule", "id": "r2", "command": {"op": "add", "rule": new}})
        added = await _until(ws, "rule_result")
        assert added["ok"] is True and added["rule"]["name"] == "parcel"
        assert added["rule"]["source"] == "runtime"
        # per-field errors for a form
        bad = {"name": "x1", "condition": "Is it?", "cooldown_s": -1, "threshold": 2}
        await send(ws, {"type": "rule", "id": "r3", "command": {"op": "add", "rule": bad}})
        refused = await _until(ws, "rule_result")
        assert refused["ok"] is False and refused["id"] == "r3"
        assert refused["error"]["code"] == "bad_request"
        fields = {f["field"] for f in refused["error"]["fields"]}
        assert fields == {"cooldown_s", "threshold"}
        # an unknown camera, a config rule changed, an unknown rule: typed, nothing changed
        cam = {"name": "yard", "cameras": ["nowhere"], "condition": "Is anyone there?"}
        await send(ws, {"type": "rule", "id": "r4", "command": {"op": "add", "rule": cam}})
        r4 = await _until(ws, "rule_result")
        assert r4["error"]["code"] == "bad_request"
        assert [f["field"] for f in r4["error"]["fields"]] == ["cameras"]
        await send(ws, {"type": "rule", "id": "r5", "command": {"op": "remove", "name": "at-door"}})
        assert (await _until(ws, "rule_result"))["error"]["code"] == "read_only"
        await send(ws, {"type": "rule", "id": "r6", "command": {"op": "get", "name": "nope"}})
        assert (await _until(ws, "rule_result"))["error"]["code"] == "unknown_rule"
        await send(ws, {"type": "rule", "id": "r7", "command": {"op": "fly"}})
        assert (await _until(ws, "rule_result"))["error"]["code"] == "bad_request"
        await send(ws, {"type": "rule", "id": "r8", "command": {"op": "list"}})
        names = [r["name"] for r in (await _until(ws, "rule_result"))["rules"]]
        assert names == ["at-door", "parcel"]


@pytest.mark.parametrize(
    ("message", "code", "words"),
    [
        ({"type": "rule", "id": "m1"}, "bad_request", "'command'"),
        ({"type": "rule", "id": "m1", "command": "list"}, "bad_request", "'command'"),
        ({"type": "rule", "command": {"op": "list"}}, "bad_request", "'id'"),
        ({"type": "subscribe", "id": "s", "camera": 3}, "bad_request", "'camera'"),
        ({"type": "subscribe", "id": "s", "rule": ""}, "bad_request", "'rule'"),
        ({"type": "subscribe", "id": "s", "colour": "red"}, "bad_request", "unknown field"),
        ({"type": "subscribe", "id": "s", "camera": "attic"}, "unknown_camera", "attic"),
        ({"type": "unsubscribe", "id": "never"}, "bad_request", "no subscription"),
        ({"type": "events", "id": "e", "limit": 0}, "bad_request", "'limit'"),
        ({"type": "events", "id": "e", "limit": "5"}, "bad_request", "'limit'"),
        ({"type": "events", "id": "e", "limit": True}, "bad_request", "'limit'"),
        ({"type": "events", "id": "e", "since": "yesterday"}, "bad_request", "'since'"),
        (
            {"type": "ask", "id": "q", "question": "Who?", "event": "1-x-door-abc"},
            "unknown_event",
            "1-x-door-abc",
        ),
        ({"type": "ask", "id": "q", "question": "Who?", "event": 7}, "bad_request", "'event'"),
    ],
)
async def test_malformed_alert_messages_get_typed_errors(
    tmp_path: Path, message: dict[str, Any], code: str, words: str
) -> None:
    async with alerted(tmp_path) as a, a.h.connect() as ws:
        await recv(ws)
        await send(ws, message)
        error = await _until(ws, "error")
        assert error["code"] == code, error
        assert words in error["message"]
        assert error["id"] == message.get("id")
        # the connection lives on
        await send(ws, {"type": "rule", "id": "after", "command": {"op": "list"}})
        assert (await _until(ws, "rule_result"))["ok"] is True


async def test_alert_messages_need_authentication(tmp_path: Path) -> None:
    async with alerted(tmp_path, token=TOKEN) as a, a.h.connect() as ws:
        await recv(ws)
        await send(ws, {"type": "rule", "id": "r", "command": {"op": "list"}})
        error = await _until(ws, "error")
        assert error["code"] == "unauthorized" and error["request_type"] == "rule"
        status, _, _ = await http(a.h.port, "/events")
        assert status == 401
        status, _, _ = await http(a.h.port, "/events/x/snapshot.jpg")
        assert status == 401


async def test_subscribers_see_events_history_ask_and_snapshots(tmp_path: Path) -> None:
    async with alerted(tmp_path) as a, a.h.connect() as ws, a.h.connect() as other:
        await recv(ws)
        await recv(other)
        await send(ws, {"type": "subscribe", "id": "all"})
        assert await _until(ws, "subscribed") == {"type": "subscribed", "id": "all"}
        await send(other, {"type": "subscribe", "id": "dock-only", "camera": "dock"})
        await _until(other, "subscribed")
        await send(ws, {"type": "subscribe", "id": "all"})  # the id is taken
        assert (await _until(ws, "error"))["code"] == "bad_request"
        pushes = await _fire(a, ws)
        kinds = [p["event"]["type"] for p in pushes]
        assert kinds[0] == "start" and kinds[-1] == "end"
        ids = {p["event"]["after"]["id"] for p in pushes}
        assert len(ids) == 1
        event_id = ids.pop()
        assert all(p["id"] == "all" for p in pushes)
        start = pushes[0]["event"]
        assert start["before"] is None and start["after"]["camera"] == "door"
        assert start["after"]["rule"] == "at-door" and start["after"]["has_snapshot"] is True
        assert pushes[-1]["event"]["after"]["end_reason"] == "cleared"
        # the dock-only subscriber heard nothing of the door
        with pytest.raises(TimeoutError):
            await recv(other, timeout=0.5)
        # history over WebSocket and HTTP: the same record
        await send(ws, {"type": "events", "id": "h1", "camera": "door", "since": "1h"})
        listed = await _until(ws, "events")
        assert listed["id"] == "h1" and [e["id"] for e in listed["events"]] == [event_id]
        assert listed["events"][0]["type"] == "end"
        status, headers, body = await http(a.h.port, "/events?camera=door&limit=5")
        assert status == 200 and headers["content-type"] == "application/json"
        assert json.loads(body)["events"] == listed["events"]
        status, _, body = await http(a.h.port, "/events?camera=dock")
        assert json.loads(body) == {"events": []}
        for bad in (
            "/events?limit=0",
            "/events?colour=red",
            "/events?since=soon",
            "/events?rule=a&rule=b",
        ):
            status, _, body = await http(a.h.port, bad)
            assert status == 400, bad
        status, headers, jpeg = await http(a.h.port, f"/events/{event_id}/snapshot.jpg")
        assert status == 200 and headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(jpeg)).format == "JPEG"
        status, _, _ = await http(a.h.port, "/events/1-none-door-000000/snapshot.jpg")
        assert status == 404
        # ask about the event: its camera and range by default
        record = listed["events"][0]
        await a.h.feed("door", 3)
        ack, *_ = await ask(ws, "q1", "What happened?", event=event_id)
        assert ack["type"] == "ack" and ack["camera"] == "door"
        from stream_agent.protocol import parse_wall_time

        assert parse_wall_time(ack["since"]) == pytest.approx(record["start_time"] - 60, abs=0.01)
        assert parse_wall_time(ack["until"]) == pytest.approx(record["end_time"] + 10, abs=0.01)
        ack2, *_ = await ask(ws, "q2", "And then?", event=event_id, since="5m")
        assert parse_wall_time(ack2["since"]) == pytest.approx(time.time() - 300, abs=5)
        # unsubscribe: no more pushes
        await send(ws, {"type": "unsubscribe", "id": "all"})
        assert await _until(ws, "unsubscribed") == {"type": "unsubscribed", "id": "all"}
        # status carries the alerts field
        await send(ws, {"type": "status", "id": "st"})
        status_reply = await _until(ws, "status")
        assert status_reply["alerts"] == {
            "mqtt": {"state": "disabled", "reason": "no mqtt section in the config"},
            "rules": 1,
            "open_events": 0,
        }
        status, _, body = await http(a.h.port, "/readyz")
        assert b"mqtt disabled" in body
        # metrics: events by rule and type
        text = a.h.metrics.registry.render()
        assert "stream_agent_ws_event_drops_total 0.0" in text


async def test_subscribers_hear_of_rule_changes_whoever_makes_them(tmp_path: Path) -> None:
    """A rule changed on another connection, or on the MQTT command topic (the same command
    handler the broker's messages go to), reaches every subscription it matches."""
    async with (
        alerted(tmp_path) as a,
        a.h.connect() as ws,
        a.h.connect() as dock,
        a.h.connect() as editor,
    ):
        for c in (ws, dock, editor):
            await recv(c)
        await send(ws, {"type": "subscribe", "id": "all"})
        await _until(ws, "subscribed")
        await send(dock, {"type": "subscribe", "id": "d", "camera": "dock"})
        await _until(dock, "subscribed")
        rule = {"name": "parcel", "cameras": ["door"], "condition": "Is there a parcel?"}
        await send(editor, {"type": "rule", "id": "r1", "command": {"op": "add", "rule": rule}})
        assert (await _until(editor, "rule_result"))["ok"] is True
        pushed = await _until(ws, "rule_changed")
        assert pushed["id"] == "all" and pushed["op"] == "add"
        assert pushed["rule"]["name"] == "parcel" and pushed["rule"]["source"] == "runtime"
        # over the MQTT command topic's handler: moved to the dock, then removed
        command = {"op": "update", "name": "parcel", "changes": {"cameras": ["dock"]}}
        assert a.service.commands.handle(json.dumps(command))["ok"] is True
        pushed = await _until(ws, "rule_changed")
        assert pushed["op"] == "update" and pushed["rule"]["cameras"] == ["dock"]
        pushed = await _until(dock, "rule_changed")  # it applies to the dock now
        assert pushed["id"] == "d" and pushed["op"] == "update"
        assert a.service.commands.handle(json.dumps({"op": "remove", "name": "parcel"}))["ok"]
        for c in (ws, dock):
            pushed = await _until(c, "rule_changed")
            assert pushed["op"] == "remove" and pushed["rule"]["name"] == "parcel"
        # the editor has no subscription: only its own reply came
        with pytest.raises(TimeoutError):
            await recv(editor, timeout=0.3)


async def test_a_full_event_queue_drops_the_oldest_and_counts(tmp_path: Path) -> None:
    async with alerted(tmp_path, event_queue_messages=1) as a, a.h.connect() as ws:
        await recv(ws)
        await send(ws, {"type": "subscribe", "id": "s"})
        await _until(ws, "subscribed")
        session = next(iter(a.h.server._sessions))
        event = {"type": "start"}
        for i in range(3):  # pushed in one go on the loop: the sender cannot keep up
            session._push_event(EventPush("s", {**event, "n": i}))
        assert a.h.metrics.ws_event_drops.value() == 2
        got = await _until(ws, "event")
        assert got["event"]["n"] == 2


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(["id", "camera", "rule", "since", "limit", "command", "x"]),
        st.one_of(
            st.none(),
            st.integers(),
            st.text(max_size=8),
            st.booleans(),
            st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        ),
    ),
    st.sampled_from(["rule", "subscribe", "unsubscribe", "events"]),
)
def test_the_parser_never_raises_on_alert_messages(fields: dict[str, Any], kind: str) -> None:
    parsed = parse_client_message(json.dumps({"type": kind, **fields}))
    assert parsed is not None
