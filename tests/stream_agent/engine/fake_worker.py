"""A deterministic Worker for tests of the engine, the server and the clients.

The real worker (model + ReKV memory) does not exist yet; this one keeps the frames it was given
per camera and answers with a fixed sentence built from them, one word per delta, ending with
evidence moments drawn from the frames inside the question's camera and time range (best first)
and its own timings, in the records the real worker yields. Gates let a
test hold the worker at a known point (before encoding, between answer tokens).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ingest.records import Frame
from stream_agent.engine import (
    AnswerDelta,
    AnswerEvent,
    AnswerFinal,
    AnswerTimings,
    CameraMemory,
    FrameBatch,
    Moment,
    Question,
    WorkerStatus,
)
from stream_agent.engine.checks import DescribeRequest, RuleCondition, RuleScore

MODEL_NAME = "fake-model"


def make_frame(
    camera: str, seq: int, *, pts: float | None = None, wall: float | None = None, size: int = 16
) -> Frame:
    """A real ingest Frame with a small deterministic image (a gradient shifted by seq)."""
    ramp = (np.arange(size * size, dtype=np.int64).reshape(size, size) + seq * 7) % 256
    image = np.repeat(ramp[:, :, None], 3, axis=2).astype(np.uint8)
    return Frame(
        source_id=camera,
        seq=seq,
        pts=float(seq) if pts is None else pts,
        wall_time=time.time() if wall is None else wall,
        image=image,
    )


@dataclass
class FakeWorker:
    """Worker protocol implementation for tests (see the module docstring).

    ``answer_words``: how many filler words follow the summary sentence. ``token_gate``: when
    set to an Event, the worker waits on it before every token after the first. ``encode_gate``:
    waits on it before each encode. Questions containing "explode" raise; frames of cameras in
    ``failing_cameras`` raise on encode; ``open_error`` makes ``open`` raise.

    Rule checks score 0.9 for a condition containing ``yes_word`` and 0.1 otherwise, over the
    camera's last three frames since the condition's ``since``; a camera without frames raises.
    ``check_gate``: waits on it before each check or description.
    """

    answer_words: int = 3
    word_text: str = "word"
    token_gate: threading.Event | None = None
    encode_gate: threading.Event | None = None
    open_error: Exception | None = None
    failing_cameras: frozenset[str] = frozenset()
    log: list[tuple[str, str]] = field(default_factory=list)
    frames: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    flushed: int = 0
    closed: bool = False
    opened: bool = False
    first_token_sent: threading.Event = field(default_factory=threading.Event)
    encode_started: threading.Event = field(default_factory=threading.Event)
    yes_word: str = "person"
    check_gate: threading.Event | None = None
    check_started: threading.Event = field(default_factory=threading.Event)

    def open(self) -> None:
        if self.open_error is not None:
            raise self.open_error
        self.opened = True

    def encode(self, batch: FrameBatch) -> None:
        self.encode_started.set()
        if self.encode_gate is not None:
            self.encode_gate.wait(10)
        self.log.append(("encode", f"{batch.camera}:{len(batch.frames)}"))
        if batch.camera in self.failing_cameras:
            raise RuntimeError(f"cannot encode {batch.camera}")
        seen = self.frames.setdefault(batch.camera, [])
        seen.extend((f.pts, f.wall_time) for f in batch.frames)

    def _moments(self, question: Question) -> list[Moment]:
        moments = []
        cameras = [question.camera] if question.camera else sorted(self.frames)
        for camera in cameras:
            for pts, wall in self.frames.get(camera, []):
                if question.since is not None and wall < question.since:
                    continue
                if question.until is not None and wall > question.until:
                    continue
                moments.append(Moment(camera, pts, pts + 1.0, wall, wall + 1.0, 0.0))
        moments = moments[-3:]
        return [
            Moment(m.camera, m.start_pts, m.end_pts, m.start_wall, m.end_wall, 0.9 - 0.1 * i)
            for i, m in enumerate(reversed(moments))
        ]

    def answer(self, question: Question, cancel: threading.Event) -> Iterator[AnswerEvent]:
        self.log.append(("answer", question.request_id))
        if "explode" in question.text:
            raise RuntimeError("the fake worker exploded as asked")
        moments = self._moments(question)
        words = [f"Seen {len(moments)} moments."] + [
            f"{self.word_text}{i}" for i in range(self.answer_words)
        ]
        began = time.perf_counter()
        first: float | None = None
        sent: list[str] = []

        def final(reason: Literal["stop", "cancelled"]) -> AnswerFinal:
            now = time.perf_counter()
            rate = (len(sent) - 1) / (now - first) if first is not None and now > first else None
            return AnswerFinal(
                text="".join(sent),
                evidence=tuple(moments),
                tokens=len(sent),
                finish_reason=reason,
                timings=AnswerTimings(
                    ttft_s=None if first is None else first - began,
                    tokens_per_s=rate if len(sent) >= 2 else None,
                    total_s=now - began,
                ),
            )

        for i, word in enumerate(words):
            if i > 0 and self.token_gate is not None:
                while not self.token_gate.wait(0.01):
                    if cancel.is_set():
                        yield final("cancelled")
                        return
            if cancel.is_set():
                yield final("cancelled")
                return
            if first is None:
                first = time.perf_counter()
            sent.append(word if i == 0 else " " + word)
            yield AnswerDelta(sent[-1])
            self.first_token_sent.set()
        yield final("stop")

    def check(self, camera: str, conditions: Sequence[RuleCondition]) -> list[RuleScore]:
        self.log.append(("check", f"{camera}:{len(conditions)}"))
        self.check_started.set()
        if self.check_gate is not None:
            self.check_gate.wait(10)
        if camera not in self.frames:
            raise RuntimeError(f"camera {camera} has no frames")
        scores = []
        for cond in conditions:
            question = Question("check", cond.text, camera=camera, since=cond.since)
            moments = sorted(self._moments(question), key=lambda m: m.start_wall)
            score = 0.9 if self.yes_word in cond.text else 0.1
            scores.append(RuleScore(score, tuple(moments)))
        return scores

    def describe(self, request: DescribeRequest) -> str:
        self.log.append(("describe", request.camera))
        if self.check_gate is not None:
            self.check_gate.wait(10)
        return f"Seen on {request.camera}: {request.condition}."

    def status(self) -> WorkerStatus:
        cameras = tuple(
            CameraMemory(
                camera=name,
                blocks=len(frames),
                ram_bytes=1000 * len(frames),
                disk_bytes=0,
                frames_encoded=len(frames),
                oldest_wall=frames[0][1] if frames else None,
                last_pts=frames[-1][0] if frames else None,
                last_wall=frames[-1][1] if frames else None,
                pruner_kept_share=0.25,
            )
            for name, frames in sorted(self.frames.items())
        )
        return WorkerStatus(ready=True, model=MODEL_NAME, cameras=cameras)

    def flush(self) -> None:
        self.flushed += 1
        self.log.append(("flush", ""))

    def close(self) -> None:
        self.closed = True
