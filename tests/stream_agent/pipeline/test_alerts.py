"""The alerts' engine adapter end to end over the real worker: a tiny LLaVA-OneVision
checkpoint, real frames of the shared clip through the real vision chain into the memory, and
20 rule conditions scored in ONE forward."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from ingest import IngestOptions, open_source
from ingest.records import Frame
from stream_agent.alerts.service import RuleQuestion
from stream_agent.config import DaemonConfig, EngineConfig
from stream_agent.engine import Engine
from stream_agent.models import VideoLLM
from stream_agent.pipeline import EngineAlerts, ModelWorker

CLIP = (
    Path(__file__).resolve().parents[3].parent
    / "shared"
    / "data"
    / ("one-by-one-person-detection.mp4")
)
CONDITIONS = [
    "a person is in the room",
    "someone walks to the table",
    "two people stand together",
    "the room is empty",
    "a person is carrying a bag",
] * 4


async def clip_frames(camera: str, count: int) -> list[Frame]:
    frames: list[Frame] = []
    now = time.time()
    async with open_source(str(CLIP), IngestOptions(fps=1.0, realtime=False)) as source:
        async for frame in source:
            wall = now - count + len(frames)
            frames.append(Frame(camera, len(frames), frame.pts, wall, frame.image, session=0))
            if len(frames) >= count:
                break
    return frames


def config(store: Path) -> DaemonConfig:
    data: dict[str, Any] = {
        "cameras": [{"name": "hall", "path": str(CLIP)}],
        "model": {"max_new_tokens": 6},
        "pruner": {"tokens_per_frame": 8},
        "memory": {"store_dir": str(store)},
        # the clip's first seconds show an empty room, which the change gate would fold into
        # one block; these tests count one block per frame
        "cacher": {"gate": {"enabled": False}},
    }
    return DaemonConfig.model_validate(data)


async def test_engine_alerts_scores_20_rules_in_one_forward_and_describes(
    llava: VideoLLM, tmp_path: Path
) -> None:
    frames = await clip_frames("hall", 6)
    assert len(frames) == 6
    worker = ModelWorker(config(tmp_path / "memory"), load=lambda: llava, model_name="tiny")
    engine = Engine(worker, EngineConfig(frame_queue_per_camera=8))
    engine.start()
    calls: list[int] = []
    hook = llava.decoder.layers[0].register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        for frame in frames:
            assert engine.submit_frame(frame)
        deadline = time.monotonic() + 120
        while engine.snapshot().frames_encoded.get("hall", 0) < len(frames):
            assert time.monotonic() < deadline, "the frames were not encoded in time"
            await asyncio.sleep(0.05)
        await asyncio.to_thread(lambda: engine.flush().result(120))
        alerts = EngineAlerts(engine)
        since = frames[3].wall_time
        questions = [
            RuleQuestion(f"r{i}", text, since if i % 2 else None)
            for i, text in enumerate(CONDITIONS)
        ]
        calls.clear()
        answers = await asyncio.to_thread(alerts.check, "hall", questions)
        assert len(calls) == 1  # every layer ran once: one forward for the 20 conditions
        assert len(answers) == 20
        assert all(0.0 <= a.score <= 1.0 for a in answers)
        unbounded, bounded = answers[0].moments, answers[1].moments
        assert len(unbounded) == 4  # the memory's recent blocks (recent_blocks defaults to 4)
        assert bounded and all(end >= since for _, end in bounded)
        assert set(bounded) < set(unbounded)
        # the same condition scores the same within one batch (positions 0 and 10, both unbounded)
        assert answers[0].score == pytest.approx(answers[10].score, abs=1e-4)

        class Event:
            id = "e1"
            start_time = frames[2].wall_time
            moments = unbounded

        calls.clear()
        text = await asyncio.to_thread(alerts.describe, "hall", Event(), CONDITIONS[0])
        assert isinstance(text, str)
        assert len(calls) >= 2  # a prefill, then decoded tokens
    finally:
        hook.remove()
        assert await engine.aclose("cancel", grace_s=30)
