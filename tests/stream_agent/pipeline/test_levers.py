"""Issue 16's levers wired into the real worker and engine: the change gate before the vision
encode (a still scene extends the newest block's time span, also across a restart), and
questions served between vision layer groups of a frame's encode (yield_point). Tiny random
checkpoints of the real model classes, the real cacher, pruner and memory on disk."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from ingest.records import Frame
from stream_agent.answers import AnswerDelta, AnswerFinal
from stream_agent.config import DaemonConfig, EngineConfig
from stream_agent.engine import (
    Engine,
    FrameBatch,
    Question,
    question_received_now,
)
from stream_agent.engine.checks import RuleCondition, RuleScore
from stream_agent.engine.records import AnswerEvent
from stream_agent.models import VideoLLM
from stream_agent.models.testing import build_test_adapter
from stream_agent.pipeline import ModelWorker

from .pictures import moving_square


def image(index: int) -> npt.NDArray[np.uint8]:
    return moving_square(index, step=12)


def config(store: Path, **sections: Any) -> DaemonConfig:
    data: dict[str, Any] = {
        "cameras": [{"name": "dock", "path": "unused.mp4"}],
        "model": {"max_new_tokens": 4},
        "pruner": {"tokens_per_frame": 8},
        "memory": {"store_dir": str(store)},
    }
    data.update(sections)
    return DaemonConfig.model_validate(data)


def opened(model: VideoLLM, cfg: DaemonConfig) -> ModelWorker:
    worker = ModelWorker(cfg, load=lambda: model, model_name="tiny")
    worker.open()
    return worker


def answer(worker: ModelWorker, question: Question) -> AnswerFinal:
    done = None
    for event in worker.answer(question, threading.Event()):
        if not isinstance(event, AnswerDelta):
            done = event
    assert isinstance(done, AnswerFinal)
    return done


def test_a_still_scene_is_gated_and_extends_the_evidence_span(
    llava: VideoLLM, tmp_path: Path
) -> None:
    """Frames 0 (first) and 1 (moved) pass; frames 2..9 show frame 1 again: no encode, and the
    newest block now ends at 9 s, in the answer's evidence and after a restart."""
    store = tmp_path / "memory"
    worker = opened(llava, config(store))
    now = time.time()
    pictures = [image(0)] + [image(1)] * 9
    batch = tuple(
        Frame("dock", i, float(i), now - 10 + i, p, session=0) for i, p in enumerate(pictures)
    )
    worker.encode(FrameBatch("dock", batch))
    memory = worker.status().camera("dock")
    assert memory is not None
    assert memory.blocks == 2 and memory.frames_encoded == 2
    assert memory.last_pts == 9.0 and memory.last_wall == pytest.approx(now - 1)
    assert dict(memory.gate_reasons) == {"first": 1, "changed": 1, "unchanged": 8}
    done = answer(worker, Question("q", "When did the square last move?", camera="dock"))
    ends = {(m.start_pts, m.end_pts) for m in done.evidence}
    assert (1.0, 9.0) in ends and ends <= {(0.0, 0.0), (1.0, 9.0)}
    # a question about the still period finds the block that covers it
    late = answer(worker, Question("q2", "Anything?", camera="dock", since=now - 3))
    assert any(m.end_pts == 9.0 for m in late.evidence)
    worker.flush()
    worker.close()

    reopened = opened(llava, config(store))
    memory = reopened.status().camera("dock")
    assert memory is not None and memory.blocks == 2 and memory.last_pts == 9.0
    reopened.close()


def test_the_span_survives_a_restart_without_a_flush(llava: VideoLLM, tmp_path: Path) -> None:
    """Extensions are batched in the index; closing the worker writes them."""
    store = tmp_path / "memory"
    worker = opened(llava, config(store))
    now = time.time()
    still = tuple(Frame("dock", i, float(i), now - 5 + i, image(0), session=0) for i in range(5))
    worker.encode(FrameBatch("dock", still))
    worker.close()
    reopened = opened(llava, config(store))
    memory = reopened.status().camera("dock")
    assert memory is not None and memory.blocks == 1 and memory.last_pts == 4.0
    reopened.close()


def test_a_gated_frame_passes_again_after_a_reconnect(llava: VideoLLM, tmp_path: Path) -> None:
    worker = opened(llava, config(tmp_path / "memory"))
    now = time.time()
    worker.encode(FrameBatch("dock", (Frame("dock", 0, 0.0, now, image(0), session=0),)))
    worker.encode(FrameBatch("dock", (Frame("dock", 1, 1.0, now, image(0), session=1),)))
    memory = worker.status().camera("dock")
    assert memory is not None and memory.blocks == 2
    assert dict(memory.gate_reasons) == {"first": 2}
    worker.close()


def test_the_gate_off_encodes_every_frame(llava: VideoLLM, tmp_path: Path) -> None:
    worker = opened(llava, config(tmp_path / "memory", cacher={"gate": {"enabled": False}}))
    now = time.time()
    still = tuple(Frame("dock", i, float(i), now, image(0), session=0) for i in range(3))
    worker.encode(FrameBatch("dock", still))
    memory = worker.status().camera("dock")
    assert memory is not None and memory.blocks == 3
    worker.close()


def test_unknown_gate_options_are_refused() -> None:
    with pytest.raises(ValueError, match="extra"):
        config(Path("unused"), cacher={"gate": {"threshold": 3}})


# --- questions between vision layer groups -----------------------------------------------------


class _Recorder(ModelWorker):
    """The real worker, recording the order of encodes and answers; at its first yield point
    inside the second frame's encode it waits for the test to queue a question."""

    def __init__(self, cfg: DaemonConfig, model: VideoLLM) -> None:
        super().__init__(cfg, load=lambda: model, model_name="tiny")
        self.events: list[str] = []
        self.inside = threading.Event()
        self.queued = threading.Event()
        self._encodes = 0

    def attach_yield_point(self, serve: Callable[[], None] | None) -> None:
        assert serve is not None

        def hook() -> None:
            if self._encodes == 2 and not self.inside.is_set():
                self.events.append("yield")
                self.inside.set()
                assert self.queued.wait(30)
            serve()

        super().attach_yield_point(hook)

    def encode(self, batch: FrameBatch) -> None:
        self._encodes += 1
        self.events.append(f"encode {self._encodes}")
        super().encode(batch)
        self.events.append(f"encoded {self._encodes}")

    def answer(self, question: Question, cancel: threading.Event) -> Iterator[AnswerEvent]:
        self.events.append(f"answer {question.request_id}")
        return super().answer(question, cancel)

    def check(self, camera: str, conditions: Sequence[RuleCondition]) -> tuple[RuleScore, ...]:
        self.events.append(f"check {camera}")
        return super().check(camera, conditions)


def _segments(store: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(store)): p.read_bytes()
        for p in sorted((store / "streams").rglob("*"))
        if p.is_file()
    }


async def test_a_question_is_answered_inside_a_frames_encode(
    llava: VideoLLM, tmp_path: Path
) -> None:
    assert len(llava.vision_layers) >= 2  # a yield point lies between two layers
    sections: dict[str, Any] = {"cacher": {"yield_every": 1}}
    worker = _Recorder(config(tmp_path / "a", **sections), llava)
    engine = Engine(worker, EngineConfig())
    engine.start()
    now = time.time()
    frames = [Frame("dock", i, float(i), now, image(i), session=0) for i in range(2)]
    try:
        for frame in frames:
            assert engine.submit_frame(frame)
        assert await asyncio.to_thread(worker.inside.wait, 60)
        # a rule check queued first still comes after the question, and both before the frame
        check = engine.check_rules("dock", [RuleCondition("Is the square pink?")])
        stream = engine.ask(
            Question("q", "What moved?", camera="dock", received_at=question_received_now())
        )
        worker.queued.set()
        _text, terminal = await stream.collect()
        assert isinstance(terminal, AnswerFinal) and terminal.evidence
        # the only block then was frame 0's: the question did not wait for frame 1
        assert {m.start_pts for m in terminal.evidence} == {0.0}
        (score,) = await asyncio.wrap_future(check)
        assert 0.0 <= score.score <= 1.0
        assert {m.start_pts for m in score.moments} == {0.0}
    finally:
        assert await engine.aclose("finish", grace_s=60)
    assert worker.events == [
        "encode 1",
        "encoded 1",
        "encode 2",
        "yield",
        "answer q",
        "check dock",
        "encoded 2",
    ]

    # the frames' blocks are the same bytes as without any question in between
    plain = opened(llava, config(tmp_path / "b", **sections))
    for frame in frames:
        plain.encode(FrameBatch("dock", (frame,)))
    plain.close()
    assert _segments(tmp_path / "a") == _segments(tmp_path / "b")


# --- int8 --------------------------------------------------------------------------------------


def test_model_quantize_int8_runs_the_vision_and_llm_in_int8(tmp_path: Path) -> None:
    from cacher.layers import QuantizedLinear
    from stream_agent.models.quantize import Int8Linear

    model = build_test_adapter("llava_onevision")  # its own: quantizing changes it in place
    worker = opened(model, config(tmp_path / "memory", model={"quantize": "int8"}))
    assert isinstance(model.vision_layers[0].out, QuantizedLinear)
    assert any(isinstance(m, Int8Linear) for m in model.decoder.layers.modules())
    now = time.time()
    batch = tuple(Frame("dock", i, float(i), now, image(i), session=0) for i in range(3))
    worker.encode(FrameBatch("dock", batch))
    memory = worker.status().camera("dock")
    assert memory is not None and memory.blocks == 3
    done = answer(worker, Question("q", "What moved?", camera="dock"))
    assert done.evidence
    worker.close()


def test_model_quantize_only_the_vision_tower(tmp_path: Path) -> None:
    from cacher.layers import QuantizedLinear
    from stream_agent.models.quantize import Int8Linear

    model = build_test_adapter("llava_onevision")
    cfg = config(tmp_path / "memory", model={"quantize": "int8", "quantize_parts": ["vision"]})
    worker = opened(model, cfg)
    assert isinstance(model.vision_layers[0].out, QuantizedLinear)
    assert not any(isinstance(m, Int8Linear) for m in model.decoder.layers.modules())
    worker.close()
