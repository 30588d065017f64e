"""The daemon as a real process on the shared clip replayed live (real-time pace, 1 fps).

One daemon (token-protected, the tiny test model) serves the whole module; every test talks to it
over loopback with real WebSocket and HTTP clients while its camera is still delivering frames.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect as sync_connect

from tests.support.daemon import (
    TOKEN,
    DaemonProcess,
    aget,
    camera_status,
    client,
    metric,
    parse_time,
    status,
    wait_for_blocks,
    write_config,
)
from tests.support.ws import ask, recv, send, until_terminal

CAMERA = "lobby"
MAX_NEW_TOKENS = 48


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, tiny_llava: Path, shared_clip: Path
) -> Iterator[DaemonProcess]:
    folder = tmp_path_factory.mktemp("live")
    config = write_config(
        folder / "daemon.yaml",
        cameras=[{"name": CAMERA, "path": str(shared_clip), "fps": 1}],
        model=tiny_llava,
        store=folder / "memory",
        max_new_tokens=MAX_NEW_TOKENS,
    )
    daemon = DaemonProcess(["--config", str(config)], folder / "daemon.log")
    daemon.start()
    try:
        yield daemon
        assert daemon.running(), f"the daemon died:\n{daemon.log_tail()}"
        assert daemon.stop(signal.SIGTERM) == 0, daemon.log_tail()
    finally:
        daemon.close()


async def newest_pts(daemon: DaemonProcess) -> float:
    reply = await aget(f"{daemon.http_url}/cameras/{CAMERA}/snapshot.jpg", TOKEN)
    assert reply.status == 200, reply.text
    return float(reply.headers["X-Frame-Pts"]) + 0.001  # the header has 3 decimals


def check_evidence(answer: dict[str, Any], *, seen_pts: float, since: float, now: float) -> None:
    """Every moment is of our camera and inside the part of the clip already seen."""
    assert answer["evidence"], answer
    for moment in answer["evidence"]:
        assert moment["camera"] == CAMERA
        assert 0.0 <= moment["start_s"] <= moment["end_s"] <= seen_pts, (moment, seen_pts)
        start, end = parse_time(moment["start_time"]), parse_time(moment["end_time"])
        assert since - 1.0 <= start <= end <= now + 1.0, (moment, since, now)
        assert 0.0 <= moment["score"] <= 1.0


async def test_an_answer_while_frames_still_flow(live: DaemonProcess) -> None:
    async with client(live) as ws:
        hello = await recv(ws)
        assert hello["type"] == "hello" and hello["auth_required"] is False
        assert [c["name"] for c in hello["cameras"]] == [CAMERA]
        await wait_for_blocks(ws, CAMERA, 3)
        assert camera_status(await status(ws), CAMERA)["state"] == "online"
        messages = await ask(ws, "q1", "What is the person doing?", camera=CAMERA)
        answered_at = time.time()
        seen = await newest_pts(live)
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "ack" and kinds[-1] == "answer", messages
    deltas = [m for m in messages if m["type"] == "delta"]
    answer = messages[-1]
    assert deltas, "the tiny model generated no text"
    assert [d["seq"] for d in deltas] == list(range(len(deltas)))
    assert "".join(d["text"] for d in deltas) == answer["text"]
    assert answer["finish_reason"] in ("stop", "length")
    assert answer["timings"]["ttft_ms"] is not None and answer["timings"]["tokens"] >= 1
    # the memory's retrieval figures reach the answer: part of its time to first token
    timings = answer["timings"]
    assert 0 < timings["retrieval_ms"] <= timings["ttft_ms"] - timings["queue_ms"] + 0.01
    assert timings["blocks_loaded"] >= 1 and timings["context_tokens"] >= 1
    assert timings["disk_reads"] >= 0
    check_evidence(answer, seen_pts=seen, since=live.started_at, now=answered_at)
    # the clip is still being replayed: newer frames keep arriving after the answer
    deadline = time.monotonic() + 10
    while await newest_pts(live) <= seen:
        assert time.monotonic() < deadline, "no frame arrived after the answer"
        await asyncio.sleep(0.3)


async def test_cancel_stops_an_answer(live: DaemonProcess) -> None:
    async with client(live) as ws:
        await recv(ws)
        await wait_for_blocks(ws, CAMERA, 2)
        await send(ws, {"type": "ask", "id": "long", "question": "Describe everything."})
        got: list[dict[str, Any]] = []
        async with asyncio.timeout(60):
            while not any(m["type"] == "delta" for m in got):
                message = await recv(ws)
                assert message["type"] not in ("answer", "error"), message
                got.append(message)
        await send(ws, {"type": "cancel", "id": "long"})
        rest = await until_terminal(ws, "long")
    answer = rest[-1]
    assert answer["type"] == "answer", rest
    assert answer["finish_reason"] == "cancelled"
    assert answer["evidence"] == []
    assert answer["timings"]["tokens"] < MAX_NEW_TOKENS


async def test_two_clients_ask_at_once(live: DaemonProcess) -> None:
    async def one(name: str) -> list[dict[str, Any]]:
        async with client(live) as ws:
            await recv(ws)
            return await ask(ws, name, f"What does {name} see?")

    first, second = await asyncio.gather(one("a"), one("b"))
    for messages in (first, second):
        assert messages[0]["type"] == "ack", messages
        assert messages[-1]["type"] == "answer", messages
        assert messages[-1]["finish_reason"] in ("stop", "length")
        assert all(m["camera"] == CAMERA for m in messages[-1]["evidence"])


async def test_http_endpoints_of_the_real_daemon(live: DaemonProcess) -> None:
    base = live.http_url
    health = await aget(f"{base}/healthz")
    assert (health.status, health.text) == (200, "ok\n")
    ready = await aget(f"{base}/readyz")
    assert ready.status == 200 and ready.text.startswith("ready: 1 of 1"), ready.text
    assert (await aget(f"{base}/metrics")).status == 401
    async with client(live) as ws:
        await recv(ws)
        await wait_for_blocks(ws, CAMERA, 2)
        answer = (await ask(ws, "m1", camera=CAMERA))[-1]
    metrics = (await aget(f"{base}/metrics", TOKEN)).text
    assert (metric(metrics, "stream_agent_memory_blocks", camera=CAMERA) or 0) >= 2
    assert metric(metrics, "stream_agent_camera_state", camera=CAMERA, state="online") == 1
    assert metric(metrics, "stream_agent_model_ready") == 1
    reuse = metric(metrics, "stream_agent_cacher_reuse_ratio", camera=CAMERA)
    assert reuse is not None and 0.0 < reuse < 1.0  # STC-Cacher reuses part of the frames
    assert metric(metrics, "stream_agent_pruner_kept_ratio", camera=CAMERA) == 0.5  # 8 of 16
    assert (metric(metrics, "stream_agent_engine_frames_encoded_total", camera=CAMERA) or 0) >= 2
    assert metric(metrics, "stream_agent_engine_frame_lag_seconds", camera=CAMERA) is not None
    assert (metric(metrics, "stream_agent_answer_ttft_seconds_count") or 0) >= 1
    assert (metric(metrics, "stream_agent_answer_retrieval_seconds_count") or 0) >= 1
    assert (metric(metrics, "stream_agent_answer_blocks_loaded_total") or 0) >= 1
    snapshot = await aget(f"{base}/cameras/{CAMERA}/snapshot.jpg", TOKEN)
    assert snapshot.status == 200 and snapshot.body[:2] == b"\xff\xd8"
    assert snapshot.headers["Content-Type"] == "image/jpeg"
    assert (await aget(f"{base}/cameras/{CAMERA}/snapshot.jpg")).status == 401
    assert (await aget(f"{base}/cameras/attic/snapshot.jpg", TOKEN)).status == 404
    frame = await aget(base + answer["evidence"][0]["frame_url"], TOKEN)
    assert frame.status == 200 and frame.body[:2] == b"\xff\xd8", frame.text


async def test_bad_inputs_get_errors_and_the_daemon_lives_on(live: DaemonProcess) -> None:
    # no token: only auth is accepted
    async with client(live, token=None) as ws:
        hello = await recv(ws)
        assert hello["auth_required"] is True and hello["cameras"] == []
        await send(ws, {"type": "ask", "id": "x", "question": "hi"})
        error = await recv(ws)
        assert (error["type"], error["code"], error["id"]) == ("error", "unauthorized", "x")
        await send(ws, {"type": "auth", "token": "wrong"})
        assert (await recv(ws))["code"] == "unauthorized"
        await send(ws, {"type": "auth", "token": TOKEN})
        assert (await recv(ws))["auth_required"] is False
    # a wrong token in the header
    async with client(live, token="not-the-token") as ws:
        assert (await recv(ws))["auth_required"] is True
        assert (await recv(ws))["code"] == "unauthorized"
    async with client(live) as ws:
        await recv(ws)
        await send(ws, "{not json")
        assert (await recv(ws))["code"] == "bad_request"
        await send(ws, {"type": "teleport", "id": "t"})
        error = await recv(ws)
        assert (error["code"], error["id"]) == ("bad_request", "t")
        await send(ws, {"type": "ask", "id": "big", "question": "x" * 10_000})
        error = await recv(ws)
        assert error["code"] == "bad_request" and "limit" in error["message"]
        unknown = await ask(ws, "cam", camera="attic")
        assert [(m["type"], m.get("code")) for m in unknown] == [("error", "unknown_camera")]
        # the same connection still answers
        good = await ask(ws, "fine", camera=CAMERA)
        assert good[0]["type"] == "ack" and good[-1]["type"] == "answer", good
    assert live.running()
    assert (await aget(f"{live.http_url}/healthz")).status == 200


@pytest.fixture(scope="module")
def sync_client(live: DaemonProcess) -> Iterator[Any]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with sync_connect(live.ws_url, additional_headers=headers, open_timeout=20) as ws:
        assert json.loads(ws.recv(timeout=20))["type"] == "hello"
        yield ws


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
)
_messages = st.one_of(
    st.text(max_size=200),
    st.dictionaries(
        st.sampled_from(["type", "id", "question", "camera", "since", "token"]), _values
    ),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["ask", "cancel", "status", "auth", "nope"])},
        optional={"id": _values, "question": _values, "camera": _values, "since": _values},
    ),
)
_probes = iter(range(1_000_000))


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(message=_messages)
def test_random_messages_never_break_the_daemon(sync_client: Any, message: Any) -> None:
    sync_client.send(message if isinstance(message, str) else json.dumps(message))
    probe = f"probe-{next(_probes)}"
    sync_client.send(json.dumps({"type": "status", "id": probe}))
    deadline = time.monotonic() + 60
    while True:  # answers to valid random questions may interleave; the probe must come back
        reply = json.loads(sync_client.recv(timeout=max(0.1, deadline - time.monotonic())))
        if reply.get("id") == probe:
            assert reply["type"] == "status"
            break


def test_a_question_still_works_after_the_random_messages(
    sync_client: Any, live: DaemonProcess
) -> None:
    sync_client.send(json.dumps({"type": "ask", "id": "after-fuzz", "question": "What now?"}))
    deadline = time.monotonic() + 90
    while True:
        reply = json.loads(sync_client.recv(timeout=max(0.1, deadline - time.monotonic())))
        if reply.get("id") == "after-fuzz" and reply["type"] in ("answer", "error"):
            assert reply["type"] == "answer", reply
            break
    assert live.running()
