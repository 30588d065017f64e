"""The real worker in process: tiny random checkpoints of the real model classes, the real
cacher, pruner and memory on disk, driven directly and through the engine."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ingest.records import Frame
from stream_agent.config import DaemonConfig, EngineConfig
from stream_agent.engine import (
    AnswerDelta,
    AnswerFailed,
    AnswerFinal,
    Engine,
    FrameBatch,
    Question,
    question_received_now,
)
from stream_agent.models import VideoLLM
from stream_agent.models.testing import build_test_adapter
from stream_agent.pipeline import ModelWorker, NothingSeenError

from .pictures import moving_square

image = moving_square


def frames(camera: str, count: int, *, start: int = 0, session: int = 0) -> tuple[Any, ...]:
    now = time.time()
    return tuple(
        Frame(camera, i, float(i), now - (count - i), image(i), session=session)
        for i in range(start, start + count)
    )


def config(store: Path, **sections: Any) -> DaemonConfig:
    data: dict[str, Any] = {
        "cameras": [{"name": "dock", "path": "unused.mp4"}],
        "model": {"max_new_tokens": 6},
        "pruner": {"tokens_per_frame": 8},
        "memory": {"store_dir": str(store)},
    }
    data.update(sections)
    return DaemonConfig.model_validate(data)


def opened(model: VideoLLM, cfg: DaemonConfig) -> ModelWorker:
    worker = ModelWorker(cfg, load=lambda: model, model_name="tiny")
    worker.open()
    assert worker.opened.done() and worker.opened.exception() is None
    return worker


def answer(worker: ModelWorker, question: Question) -> tuple[str, AnswerFinal | None]:
    text = []
    done = None
    for event in worker.answer(question, threading.Event()):
        if isinstance(event, AnswerDelta):
            text.append(event.text)
        else:
            done = event
    return "".join(text), done


def test_frames_become_blocks_and_answers_cite_them(llava: VideoLLM, tmp_path: Path) -> None:
    worker = opened(llava, config(tmp_path / "memory"))
    worker.encode(FrameBatch("dock", frames("dock", 5)))
    status = worker.status()
    assert status.ready and status.model == "tiny"
    memory = status.camera("dock")
    assert memory is not None
    assert memory.blocks == 5 and memory.frames_encoded == 5 and memory.last_pts == 4.0
    # STC-Cacher (paper mode, interval 2) recomputes a quarter of the tokens on every other frame
    assert memory.cacher_reuse_share is not None and 0.2 < memory.cacher_reuse_share < 0.5
    assert memory.pruner_kept_share == 0.5  # 8 of the tiny model's 16 tokens per frame
    text, done = answer(worker, Question("q", "What moves?", camera="dock"))
    assert done is not None and done.tokens >= 1 and done.finish_reason in ("stop", "length")
    assert text or done.finish_reason == "stop"
    assert done.evidence and all(m.camera == "dock" for m in done.evidence)
    assert all(0.0 <= m.start_pts <= m.end_pts <= 4.0 for m in done.evidence)
    ranks = [m.score for m in done.evidence]
    assert ranks == sorted(ranks, reverse=True)  # best first
    worker.close()


def test_adaptive_cacher_reuses_a_still_scene(llava: VideoLLM, tmp_path: Path) -> None:
    """``cacher.method = adaptive`` (gate off): repeated identical frames reuse the reference
    whole, and such a frame is not stored again: the block's time span grows instead."""
    cacher = {"method": "adaptive", "gate": {"enabled": False}}
    worker = opened(llava, config(tmp_path / "memory", cacher=cacher))
    still = tuple(Frame("dock", i, float(i), time.time(), image(0), session=0) for i in range(4))
    worker.encode(FrameBatch("dock", still))
    memory = worker.status().camera("dock")
    # the first frame is encoded in full, the three identical ones reuse it whole
    assert memory is not None and memory.cacher_reuse_share is not None
    assert memory.cacher_reuse_share >= 0.7
    assert memory.blocks == 1 and memory.reused_extensions == 3 and memory.last_pts == 3.0
    assert memory.gate_reasons == (("disabled", 4),)
    worker.close()


def test_uncompressed_ways_keep_every_token(llava: VideoLLM, tmp_path: Path) -> None:
    cfg = config(
        tmp_path / "memory",
        cacher={"method": "none"},
        pruner={"method": "none", "tokens_per_frame": None},
    )
    worker = opened(llava, cfg)
    worker.encode(FrameBatch("dock", frames("dock", 3)))
    memory = worker.status().camera("dock")
    assert memory is not None
    assert memory.cacher_reuse_share == 0.0 and memory.pruner_kept_share == 1.0
    worker.close()


def test_questions_about_unseen_cameras_are_refused(llava: VideoLLM, tmp_path: Path) -> None:
    worker = opened(llava, config(tmp_path / "memory"))
    with pytest.raises(NothingSeenError, match="no camera has delivered"):
        worker.answer(Question("q", "Anything?"), threading.Event())
    worker.encode(FrameBatch("dock", frames("dock", 1)))
    with pytest.raises(NothingSeenError, match="'door' has not delivered"):
        worker.answer(Question("q", "Anything?", camera="door"), threading.Event())
    worker.close()


async def test_the_engine_reports_a_refusal_with_its_code(llava: VideoLLM, tmp_path: Path) -> None:
    worker = ModelWorker(config(tmp_path / "memory"), load=lambda: llava, model_name="tiny")
    engine = Engine(worker, EngineConfig())
    engine.start()
    try:
        stream = engine.ask(
            Question("q", "Anything?", camera="door", received_at=question_received_now())
        )
        _text, terminal = await stream.collect()
        assert isinstance(terminal, AnswerFailed)
        assert terminal.code == "unknown_camera" and "has not delivered" in terminal.message
    finally:
        assert await engine.aclose("cancel", grace_s=30)


def test_a_new_source_session_resets_the_cacher_and_pruner(llava: VideoLLM, tmp_path: Path) -> None:
    worker = opened(llava, config(tmp_path / "memory"))
    worker.encode(FrameBatch("dock", frames("dock", 3, session=0)))
    chain = worker._cameras["dock"].chain  # the worker's own, to read its statistics
    assert chain.stats().resets == 0
    # the source reconnected in the middle of a batch: the reset falls between the frames
    batch = frames("dock", 2, start=3, session=0) + frames("dock", 2, start=5, session=1)
    worker.encode(FrameBatch("dock", batch))
    assert chain.stats().resets == 1
    memory = worker.status().camera("dock")
    assert memory is not None and memory.blocks == 7
    worker.encode(FrameBatch("dock", frames("dock", 1, start=7, session=1)))
    assert chain.stats().resets == 1
    worker.close()


def test_a_reopened_worker_answers_from_the_stored_memory(llava: VideoLLM, tmp_path: Path) -> None:
    store = tmp_path / "memory"
    first = opened(llava, config(store))
    first.encode(FrameBatch("dock", frames("dock", 4)))
    first.flush()
    first.close()
    second = opened(llava, config(store))
    memory = second.status().camera("dock")
    assert memory is not None and memory.blocks == 4
    _text, done = answer(second, Question("q", "What happened?", camera="dock"))
    assert done is not None and done.evidence
    assert {m.start_pts for m in done.evidence} <= {0.0, 1.0, 2.0, 3.0}
    second.close()


def test_two_frame_steps_wait_for_their_partner(tmp_path: Path) -> None:
    """Qwen2-VL encodes frame pairs; the cacher reuses whole 2x2 merge windows."""
    qwen = build_test_adapter("qwen2_vl")
    worker = opened(qwen, config(tmp_path / "memory"))
    worker.encode(FrameBatch("dock", frames("dock", 3)))
    memory = worker.status().camera("dock")
    assert memory is not None and memory.blocks == 1  # the third frame waits
    worker.encode(FrameBatch("dock", frames("dock", 1, start=3)))
    memory = worker.status().camera("dock")
    assert memory is not None and memory.blocks == 2 and memory.last_pts == 3.0
    _text, done = answer(worker, Question("q", "What moves?"))
    assert done is not None and done.evidence
    assert {(m.start_pts, m.end_pts) for m in done.evidence} <= {(0.0, 1.0), (2.0, 3.0)}
    worker.close()


def test_a_failed_pruner_push_does_not_break_the_camera(
    llava: VideoLLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One frame whose pruning fails is lost (the error reaches the engine, which counts it);
    the camera's next frames still become blocks."""
    worker = opened(llava, config(tmp_path / "memory"))
    worker.encode(FrameBatch("dock", frames("dock", 2)))
    chain = worker._cameras["dock"].chain
    real = chain._pruner.push
    calls = {"n": 0}

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            real(*args, **kwargs)  # the pruner counted the frame, then something failed
            raise RuntimeError("pruning failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(chain._pruner, "push", flaky)
    with pytest.raises(RuntimeError, match="pruning failed"):
        worker.encode(FrameBatch("dock", frames("dock", 1, start=2)))
    worker.encode(FrameBatch("dock", frames("dock", 3, start=3)))
    memory = worker.status().camera("dock")
    assert memory is not None and memory.blocks == 5
    assert not chain._held
    worker.close()
