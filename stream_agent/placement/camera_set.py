"""A :class:`~stream_agent.engine.Worker` over a changing set of cameras, one memory store each.

On a Ray placement a camera can move to another engine (its engine died), and the new owner must
open that camera's memory, and only that camera's: so each camera has its own store folder
(``<memory.store_dir>/cameras/<name>``, its own SQLite index and evidence frames) and its own
:class:`~stream_agent.pipeline.ModelWorker`, while one model, loaded once, serves them all. The
one engine thread drives this worker, so the per-camera workers are never used concurrently.

A camera is adopted by name from any thread; its store is opened on the engine thread at the
next call that needs it (``open`` for the initial set, ``flush``, ``encode`` or ``answer``), which
loads what that camera's memory held when its last owner flushed it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from stream_agent.answers import AnswerDelta, AnswerFinal, AnswerTimings
from stream_agent.config import DaemonConfig
from stream_agent.engine.checks import DescribeRequest, RuleCondition, RuleScore
from stream_agent.engine.records import (
    AnswerEvent,
    FrameBatch,
    Question,
    WorkerStatus,
)
from stream_agent.memory.frames import FrameStore
from stream_agent.models.base import VideoLLM
from stream_agent.pipeline.errors import NothingSeenError
from stream_agent.pipeline.stages import FrameNote
from stream_agent.pipeline.worker import ModelWorker
from stream_agent.placement.merge import Candidate, from_final, pick

log = logging.getLogger(__name__)


def camera_store(store_dir: Path, camera: str) -> Path:
    """The folder of one camera's memory on a Ray placement (shared by every engine)."""
    return store_dir / "cameras" / camera


class CameraSetWorker:
    """The Worker protocol over per-camera ModelWorkers sharing one model (see the module)."""

    def __init__(
        self,
        config: DaemonConfig,
        *,
        load: Callable[[], VideoLLM],
        model_name: str,
        cameras: tuple[str, ...] = (),
        on_frame: FrameNote | None = None,
    ) -> None:
        """``on_frame`` hears of every frame each camera's vision chain takes (what the
        alerts' motion gate reads), as :class:`~stream_agent.pipeline.ModelWorker` says."""
        self._config = config
        self._on_frame = on_frame
        self._load = load
        self.model_name = model_name
        self._model: VideoLLM | None = None
        self._lock = threading.Lock()
        self._wanted: list[str] = list(cameras)
        self._workers: dict[str, ModelWorker] = {}

    def adopt(self, camera: str) -> None:
        """Own ``camera`` from now on (its store opens on the engine thread)."""
        with self._lock:
            if camera not in self._wanted:
                self._wanted.append(camera)

    @property
    def cameras(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._wanted)

    # --- lifecycle (engine thread) ---------------------------------------------------------

    def open(self) -> None:
        self._model = self._load()
        self._open_adopted()

    def _open_adopted(self) -> None:
        for camera in self.cameras:
            if camera not in self._workers:
                self._open_camera(camera)

    def _open_camera(self, camera: str) -> ModelWorker:
        model = self._model
        if model is None:
            raise RuntimeError("the worker is not open")
        store = camera_store(self._config.memory.store_dir, camera)
        memory = self._config.memory.model_copy(update={"store_dir": store})
        config = self._config.model_copy(update={"memory": memory})
        worker = ModelWorker(
            config,
            load=lambda: model,
            model_name=self.model_name,
            on_frame=self._on_frame,
            frames=FrameStore(store / "frames"),
        )
        worker.open()
        self._workers[camera] = worker
        log.info("camera set: opened the memory of camera %s (%s)", camera, store)
        return worker

    def flush(self) -> None:
        self._open_adopted()
        for worker in self._workers.values():
            worker.flush()

    def close(self) -> None:
        for worker in self._workers.values():
            worker.close()
        self._workers.clear()
        self._model = None

    # --- work (engine thread) --------------------------------------------------------------

    def encode(self, batch: FrameBatch) -> None:
        if batch.camera not in self.cameras:
            raise NothingSeenError(f"camera {batch.camera!r} is not owned by this engine")
        worker = self._workers.get(batch.camera) or self._open_camera(batch.camera)
        worker.encode(batch)

    def answer(self, question: Question, cancel: threading.Event) -> Iterator[AnswerEvent]:
        self._open_adopted()
        if question.camera is not None:
            worker = self._workers.get(question.camera)
            if worker is None:
                raise NothingSeenError(f"camera {question.camera!r} is not owned by this engine")
            yield from worker.answer(question, cancel)
            return
        # all cameras of this engine: each memory answers, the best-scoring answer is kept
        candidates: list[Candidate] = []
        for camera, worker in self._workers.items():
            if cancel.is_set():
                break
            try:
                events = list(worker.answer(question, cancel))
            except NothingSeenError:
                continue
            final = next((e for e in events if isinstance(e, AnswerFinal)), None)
            if final is not None:
                candidates.append(from_final(camera, final))
        if not candidates:
            if cancel.is_set():
                return
            raise NothingSeenError(
                "no camera of this engine has delivered any frame to the memory yet"
            )
        best = pick(candidates)
        if best.text:
            yield AnswerDelta(best.text)
        yield AnswerFinal(
            text=best.text,
            evidence=best.evidence,
            tokens=best.tokens,
            finish_reason="cancelled" if cancel.is_set() else "stop",
            timings=AnswerTimings(ttft_s=None, tokens_per_s=None, total_s=0.0),
            notes=best.notes,
        )

    def _owned(self, camera: str) -> ModelWorker:
        self._open_adopted()
        worker = self._workers.get(camera)
        if worker is None:
            raise NothingSeenError(f"camera {camera!r} is not owned by this engine")
        return worker

    def check(self, camera: str, conditions: Sequence[RuleCondition]) -> tuple[RuleScore, ...]:
        """A rule check of ``camera`` by the memory that owns it."""
        return self._owned(camera).check(camera, conditions)

    def describe(self, request: DescribeRequest) -> str:
        """An event's one-sentence description by the memory that owns its camera."""
        return self._owned(request.camera).describe(request)

    def status(self) -> WorkerStatus:
        if self._model is None:
            return WorkerStatus(ready=False, reason="the model is not loaded")
        cameras = tuple(c for w in self._workers.values() for c in w.status().cameras)
        return WorkerStatus(ready=True, model=self.model_name, cameras=cameras)
