"""``placement: ray`` on a real local multi-node Ray cluster (``ray.cluster_utils.Cluster``: a
head and a worker node, CPU only): two engine actors, three cameras (the shared clip, a
generated clip and a camera on the real RTSP server), the daemon as a subprocess joining the
cluster. Questions about each camera and about all of them; killing an engine moves its cameras
to the other, which answers about moments seen before the kill; SIGTERM flushes every engine's
memories and a restart reloads them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import (
    TOKEN,
    DaemonProcess,
    aget,
    camera_status,
    client,
    parse_time,
    status,
    wait_for_blocks,
    write_config,
)
from tests.support.rtsp import RtspServer, gst_rtsp_problem
from tests.support.ws import ask, recv

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.rtsp
CAMERAS = ("shop", "lobby", "street")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address, namespace="stream-agent", log_to_driver=False)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def placement_of(metrics: str) -> dict[str, tuple[str, str]]:
    """camera -> (engine, node) from ``stream_agent_camera_engine`` samples."""
    out: dict[str, tuple[str, str]] = {}
    for line in metrics.splitlines():
        if line.startswith("stream_agent_camera_engine{") and line.rstrip().endswith(" 1.0"):
            labels = dict(
                part.split("=", 1)
                for part in line[line.index("{") + 1 : line.index("}")].split(",")
            )
            clean = {k: v.strip('"') for k, v in labels.items()}
            out[clean["camera"]] = (clean["engine"], clean["node"])
    return out


async def placement_now(daemon: DaemonProcess) -> dict[str, tuple[str, str]]:
    reply = await aget(f"{daemon.http_url}/metrics", TOKEN)
    return placement_of(reply.text)


MOVING_RULE = {
    "name": "moving",
    "cameras": ["shop"],
    "condition": "Does something move?",
    "check_interval_s": 1,
    "threshold": 1e-9,
    "gates": {"motion": 0.01, "person": False},
}


def sample(metrics: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the exposition (labels: a subset that must match)."""
    for line in metrics.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return None


async def engine_metrics_filled(daemon: DaemonProcess) -> None:
    """On Ray, /metrics shows what the engines do (mirrored from their snapshots, counted at
    the front) and the shop rule's motion gate sees the engines' frames: its checks reach the
    model (the shared clip moves)."""
    deadline = time.monotonic() + 60
    while True:
        text = (await aget(f"{daemon.http_url}/metrics", TOKEN)).text
        checks = sample(text, "stream_agent_alert_rule_checks_total", rule="moving") or 0.0
        if checks > 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert checks > 0, "the motion gate never passed a check on Ray"
    for camera in CAMERAS:
        assert (sample(text, "stream_agent_engine_frames_encoded_total", camera=camera) or 0) > 0
        assert (sample(text, "stream_agent_memory_ram_bytes", camera=camera) or 0) > 0
    assert sample(text, "stream_agent_engine_queue_depth", kind="checks") is not None


def evidence_cameras(answer: dict[str, Any]) -> set[str]:
    return {m["camera"] for m in answer["evidence"]}


async def test_two_engines_three_cameras_move_and_restart(
    cluster: Cluster,
    tmp_path: Path,
    tiny_llava: Path,
    long_clip: Path,
    short_clip: Path,
    shared_clip: Path,
) -> None:
    problem = gst_rtsp_problem()
    if problem:
        pytest.skip(problem)
    rtsp = RtspServer(long_clip, mount="/cam").start()
    config = write_config(
        tmp_path / "daemon.yaml",
        cameras=[
            {"name": "shop", "path": str(shared_clip), "fps": 1},
            {"name": "lobby", "path": str(short_clip), "fps": 1},
            {"name": "street", "url": rtsp.url(), "fps": 1},
        ],
        model=tiny_llava,
        store=tmp_path / "memory",
        engine={
            "placement": {
                "kind": "ray",
                "ray": {
                    "address": cluster.address,
                    "engines": 2,
                    "num_cpus": 1,
                    "flush_interval_s": 1,
                    "health_interval_s": 0.5,
                },
            }
        },
        # the motion gate on (its default): the engines' frame notes must reach the front
        alerts={"rules": [MOVING_RULE], "tick_s": 0.2},
    )
    daemon = DaemonProcess(["--config", str(config)], tmp_path / "daemon.log")
    try:
        daemon.start()
        async with client(daemon) as ws:
            await recv(ws)
            for camera in CAMERAS:
                await wait_for_blocks(ws, camera, 2)
            placed = await placement_now(daemon)
            assert set(placed) == set(CAMERAS)
            reply = await status(ws, "placed")
            for c in CAMERAS:
                engine, node = placed[c]
                assert camera_status(reply, c)["placement"] == {"engine": engine, "node": node}
            engines = {e for e, _ in placed.values()}
            assert engines == {"engine-0", "engine-1"}
            assert len({n for _, n in placed.values()}) == 2  # one engine on each node
            await engine_metrics_filled(daemon)

            for camera in CAMERAS:
                messages = await ask(ws, f"q-{camera}", "What happens here?", camera=camera)
                answer = messages[-1]
                assert answer["type"] == "answer", messages
                assert answer["evidence"] and evidence_cameras(answer) == {camera}
                assert answer["timings"]["ttft_ms"] is not None
            messages = await ask(ws, "q-all", "What happens on all cameras?")
            answer = messages[-1]
            assert answer["type"] == "answer", messages
            assert evidence_cameras(answer) == set(CAMERAS)

            # kill the engine that owns the most cameras: they move to the other one
            counts = {e: sum(1 for v in placed.values() if v[0] == e) for e in engines}
            victim = max(sorted(engines), key=lambda e: counts[e])
            moved = [c for c, (e, _) in placed.items() if e == victim]
            before = {c: camera_status(await status(ws, f"b-{c}"), c) for c in moved}
            time.sleep(2.5)  # two flush intervals: what was seen is on the shared store
            killed_at = time.time()
            ray.kill(ray.get_actor(victim, namespace="stream-agent"), no_restart=True)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                now = await placement_now(daemon)
                if all(now.get(c, ("",))[0] not in ("", victim) for c in moved):
                    break
                time.sleep(0.5)
            else:
                raise AssertionError(f"the cameras of {victim} did not move: {now}")
            for c in moved:
                seen_from = before[c]["memory"]["start_time"]
                messages = await ask(
                    ws,
                    f"m-{c}",
                    "What happened before?",
                    camera=c,
                    until=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(killed_at - 1)),
                )
                answer = messages[-1]
                assert answer["type"] == "answer", messages
                assert answer["evidence"], answer
                for moment in answer["evidence"]:
                    assert moment["camera"] == c
                    assert parse_time(moment["end_time"]) <= killed_at
                    assert parse_time(moment["start_time"]) >= parse_time(seen_from) - 1
            reply = await status(ws, "after-move")
            for c in CAMERAS:
                memory = camera_status(reply, c)["memory"]
                assert (memory["blocks"] or 0) > 0, (c, reply)
            stored = {c: camera_status(reply, c)["memory"]["start_time"] for c in CAMERAS}

        assert daemon.stop() == 0  # SIGTERM: every engine flushes its memories
        # the restart reloads every camera's memory, from the one engine or the other
        restarted_at = time.time()
        daemon.start()
        async with client(daemon) as ws:
            await recv(ws)
            reply = await status(ws, "restart")
            for c in CAMERAS:
                memory = camera_status(reply, c)["memory"]
                assert (memory["blocks"] or 0) > 0, (c, reply)
                assert parse_time(memory["start_time"]) <= parse_time(stored[c]) + 1
                assert parse_time(memory["start_time"]) < restarted_at
        assert daemon.stop() == 0
    finally:
        daemon.close()
        rtsp.close()


async def test_a_cancelled_question_ends_cancelled_and_an_all_cameras_question_merges(
    cluster: Cluster, tmp_path: Path, tiny_llava: Path
) -> None:
    """The front in this process (no WebSocket): cancelling a long answer on its engine ends it
    with ``cancelled``; asking all cameras gets evidence from both engines."""
    from ingest.records import Frame
    from stream_agent.answers import AnswerFinal
    from stream_agent.config import DaemonConfig
    from stream_agent.engine import Question, question_received_now
    from stream_agent.metrics import DaemonMetrics, Registry
    from stream_agent.placement.ray_group import RayEngineGroup
    from tests.stream_agent.pipeline.pictures import moving_square as image

    config = DaemonConfig.model_validate(
        {
            "cameras": [{"name": c, "path": "unused.mp4"} for c in ("a", "b")],
            "model": {"path": str(tiny_llava), "device": "cpu", "max_new_tokens": 4000},
            "pruner": {"tokens_per_frame": 8},
            "memory": {"store_dir": str(tmp_path / "memory")},
            "engine": {
                "placement": {
                    "kind": "ray",
                    "ray": {"address": cluster.address, "engines": 2, "health_interval_s": 0.2},
                }
            },
        }
    )
    notes: list[tuple[str, float, float | None]] = []
    metrics = DaemonMetrics(Registry())
    group = RayEngineGroup(config, metrics=metrics, on_frame=lambda *note: notes.append(note))
    group.start()
    try:
        import asyncio

        await asyncio.wrap_future(group.opened)
        now = time.time()
        deadline = time.monotonic() + 60
        for i in range(4):
            # one frame per camera at a time: the front sheds frames beyond what is in flight
            for camera in ("a", "b"):
                group.submit_frame(Frame(camera, i, float(i), now + i, image(i)))
            while not all(group.snapshot().frames_encoded.get(c, 0) > i for c in ("a", "b")):
                assert time.monotonic() < deadline, group.snapshot()
                await asyncio.sleep(0.05)
        stream = group.ask(
            Question("long", "Tell a long story.", "a", received_at=question_received_now())
        )
        await asyncio.sleep(0.5)
        stream.cancel()
        _, final = await stream.collect()
        assert isinstance(final, AnswerFinal) and final.finish_reason == "cancelled", final
        assert final.tokens < 4000
        _, merged = await group.ask(
            Question("all", "What moves?", None, received_at=question_received_now())
        ).collect()
        assert isinstance(merged, AnswerFinal), merged
        assert {m.camera for m in merged.evidence} == {"a", "b"}
        # every frame the engines took is reported to the front, in order, with its share
        while len(notes) < 8:
            assert time.monotonic() < deadline + 30, notes
            await asyncio.sleep(0.05)
        for camera in ("a", "b"):
            mine = [n for n in notes if n[0] == camera]
            assert [round(n[1] - now) for n in mine] == [0, 1, 2, 3]
            assert all(n[2] is None or 0.0 <= n[2] <= 1.0 for n in mine)
            assert metrics.engine_frames_encoded.value(camera=camera) == 4
        assert metrics.answers.value(outcome="cancelled") == 1
        assert metrics.answers.value(outcome="stop") == 1
        assert metrics.answer_ttft.count() >= 1
    finally:
        await group.aclose()
