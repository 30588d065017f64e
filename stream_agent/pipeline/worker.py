"""The real :class:`~stream_agent.engine.Worker`: the video LLM, one vision chain per camera and
the ReKV memory of all cameras, driven by the engine thread.

``open`` loads the model (through the loader the daemon passes: a local folder or a hub id) and
opens the memory over its store, which brings back what earlier runs stored. ``encode`` runs each
frame through its camera's chain (preprocess, patch embedding, STC-Cacher, the family's head,
the pruner) and appends the resulting blocks to the camera's memory stream. ``answer`` asks the
memory and streams its text, ending with the moments it used. ``flush`` writes everything to
disk; ``close`` releases the memory and the model.

When a frame's source session (stamped by ingest's decode thread) differs from the previous
frame's (the camera reconnected), the
camera's cacher reference and pruner history are dropped first, so that no frame is compared with
a picture from before the break.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from stream_agent.config import DaemonConfig
from stream_agent.engine.checks import DescribeRequest, RuleCondition, RuleScore, describe_prompt
from stream_agent.engine.records import (
    AnswerDelta,
    AnswerEvent,
    CameraMemory,
    FrameBatch,
    FrameLike,
    Moment,
    Question,
    WorkerStatus,
)
from stream_agent.memory import CheckCondition, Memory, MemoryOptions
from stream_agent.memory.frames import FrameStore
from stream_agent.models.base import VideoLLM
from stream_agent.models.loading import ModelLoader
from stream_agent.models.quantize import quantize_model
from stream_agent.models.records import DecodeOptions
from stream_agent.pipeline.errors import NothingSeenError
from stream_agent.pipeline.stages import (
    ChainSettings,
    FrameNote,
    VisionChain,
    answer_events,
    append_blocks,
    chain_settings,
    memory_status,
    memory_streams,
    open_memory,
)

log = logging.getLogger(__name__)


class _Camera:
    """A camera's chain and the session of its last frame."""

    def __init__(self, chain: VisionChain) -> None:
        self.chain = chain
        self.session: int | None = None
        self.vision_s = 0.0  # engine-thread seconds in the vision chain (answers excluded)
        self.prefill_s = 0.0  # ... in the memory (prefill of the blocks, span extensions)


class ModelWorker:
    """Implements the engine's Worker protocol over a video LLM and the memory.

    ``load`` builds the model (called once, on the engine thread, in :meth:`open`);
    ``model_name`` is what clients are told; ``decode`` overrides the decoding options (default:
    greedy, ``model.max_new_tokens``, the checkpoint's stop tokens); ``frames`` keeps each
    stored block's evidence frame on disk with the memory (the server reads it). ``opened``
    resolves when :meth:`open` has finished (or carries its exception), so that the daemon can
    wait for the model without polling.
    """

    def __init__(
        self,
        config: DaemonConfig,
        *,
        load: ModelLoader,
        model_name: str,
        decode: DecodeOptions | None = None,
        on_frame: FrameNote | None = None,
        frames: FrameStore | None = None,
    ) -> None:
        """``on_frame`` hears of every encoded frame with the cacher's changed-token share."""
        self._config = config
        self._on_frame = on_frame
        self._frames = frames
        self._load = load
        self.model_name = model_name
        self.opened: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._model: VideoLLM | None = None
        self._memory: Memory | None = None
        self._cameras: dict[str, _Camera] = {}
        self._decode = decode or DecodeOptions(max_new_tokens=config.model.max_new_tokens)
        self._settings: ChainSettings | None = None
        self._yield_point: Callable[[], None] | None = None
        self._serve: Callable[[], None] | None = None
        self._served_s = 0.0

    def attach_yield_point(self, serve: Callable[[], None] | None) -> None:
        """The engine's hook for questions that arrive during a frame's encode: called between
        vision layer groups (``cacher.yield_every`` layers); it answers waiting questions on the
        engine thread and never encodes frames."""
        self._serve = serve
        self._yield_point = None if serve is None else self._served

    def _served(self) -> None:
        assert self._serve is not None
        began = time.perf_counter()
        try:
            self._serve()
        finally:
            self._served_s += time.perf_counter() - began

    def _add(self, camera: _Camera, name: str, frames: tuple[FrameLike, ...]) -> None:
        """``frames`` through the camera's chain, then into the memory, timing both."""
        memory = self._require_memory()
        began, served = time.perf_counter(), self._served_s
        added = camera.chain.add(frames, yield_point=self._yield_point)
        chained = time.perf_counter()
        camera.vision_s += chained - began - (self._served_s - served)
        append_blocks(memory, name, added)
        camera.prefill_s += time.perf_counter() - chained

    # --- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        try:
            model = self._load()
            if self._config.model.quantize == "int8":
                # before the cachers are built: they run the (now int8) vision layer records
                quantize_model(model, self._config.model.quantize_parts)
            settings = chain_settings(self._config.cacher, self._config.pruner, model)
            options = MemoryOptions.from_config(self._config.memory)
            self._memory = open_memory(model, options, self._frames)
            self._settings = settings
            self._model = model
        except BaseException as exc:
            if not self.opened.done():
                self.opened.set_exception(exc)
            raise
        streams = memory_streams(self._memory)
        log.info(
            "worker ready: %s (%s on %s), memory of %d stored camera(s)%s",
            self.model_name,
            model.family,
            model.device,
            len(streams),
            f": {', '.join(streams)}" if streams else "",
        )
        if not self.opened.done():
            self.opened.set_result(None)

    def flush(self) -> None:
        memory = self._require_memory()
        for name, camera in self._cameras.items():
            try:
                append_blocks(memory, name, camera.chain.drain())
            except Exception:  # one camera's held frames must not keep the others' from disk
                log.exception("worker: the frames camera %s still held could not be stored", name)
        memory.flush()

    def close(self) -> None:
        memory, self._memory = self._memory, None
        self._cameras.clear()
        self._model = None
        if memory is not None:
            memory.close()

    # --- work ------------------------------------------------------------------------------

    def encode(self, batch: FrameBatch) -> None:
        memory = self._require_memory()
        camera = self._camera(batch.camera)
        start = 0
        frames = batch.frames
        for i, frame in enumerate(frames):
            session = frame.session
            if camera.session is not None and session != camera.session:
                self._add(camera, batch.camera, frames[start:i])
                start = i
                log.info(
                    "worker: camera %s reconnected (session %d); its cacher and pruner start over",
                    batch.camera,
                    session,
                )
                append_blocks(memory, batch.camera, camera.chain.reset())
            camera.session = session
        self._add(camera, batch.camera, frames[start:])

    def answer(self, question: Question, cancel: threading.Event) -> Iterator[AnswerEvent]:
        memory = self._require_memory()
        streams = memory_streams(memory)
        if question.camera is not None and question.camera not in streams:
            raise NothingSeenError(
                f"camera {question.camera!r} has not delivered any frame to the memory yet; "
                "ask again once it is online"
            )
        if not streams:
            raise NothingSeenError(
                "no camera has delivered any frame to the memory yet; ask again once one is online"
            )
        # Frames a windowed pruner still holds back are part of what was seen: encode them now.
        for name, camera in self._cameras.items():
            if question.camera is None or name == question.camera:
                append_blocks(memory, name, camera.chain.drain())
        return answer_events(
            memory,
            question.text,
            camera=question.camera,
            since=question.since,
            until=question.until,
            options=self._decode,
            cancel=cancel,
        )

    def check(self, camera: str, conditions: Sequence[RuleCondition]) -> tuple[RuleScore, ...]:
        """Score the conditions over ``camera``'s recent blocks in one batched forward
        (:meth:`Memory.check`). It looks at the blocks already encoded: unlike a question it
        does not flush what a windowed pruner holds back (checks come every few seconds and
        would cut every pruning window short)."""
        memory = self._require_memory()
        self._require_stream(memory, camera)
        results = memory.check(camera, [CheckCondition(c.text, c.since) for c in conditions])
        return tuple(
            RuleScore(
                score=r.score,
                moments=tuple(
                    Moment(camera, m.pts_start, m.pts_end, m.wall_start, m.wall_end, 1.0, seq=m.seq)
                    for m in r.blocks
                ),
            )
            for r in results
        )

    def describe(self, request: DescribeRequest) -> str:
        """The answer path with :func:`describe_prompt`, within the request's time range, at
        most ``request.max_new_tokens`` tokens (greedy, as questions)."""
        memory = self._require_memory()
        self._require_stream(memory, request.camera)
        options = dataclasses.replace(self._decode, max_new_tokens=request.max_new_tokens)
        text = [
            event.text
            for event in answer_events(
                memory,
                describe_prompt(request.condition),
                camera=request.camera,
                since=request.since,
                until=request.until,
                options=options,
                cancel=threading.Event(),
            )
            if isinstance(event, AnswerDelta)
        ]
        return "".join(text).strip()

    @staticmethod
    def _require_stream(memory: Memory, camera: str) -> None:
        if camera not in memory_streams(memory):
            raise NothingSeenError(
                f"camera {camera!r} has not delivered any frame to the memory yet; "
                "check again once it is online"
            )

    def status(self) -> WorkerStatus:
        memory = self._memory
        if memory is None:
            return WorkerStatus(ready=False, reason="the model is not loaded", model=None)
        cameras = []
        for stream in memory_status(memory):
            camera = self._cameras.get(stream.stream)
            stats = camera.chain.stats() if camera is not None else None
            cameras.append(
                CameraMemory(
                    camera=stream.stream,
                    blocks=stream.blocks,
                    ram_bytes=stream.ram_bytes,
                    disk_bytes=stream.disk_bytes,
                    frames_encoded=stream.frames_encoded,
                    oldest_wall=stream.oldest_wall,
                    last_pts=stream.last_pts,
                    last_wall=stream.last_wall,
                    cacher_reuse_share=None if stats is None else stats.cacher_reuse_share,
                    pruner_kept_share=None if stats is None else stats.pruner_kept_share,
                    gate_reasons=() if stats is None else stats.gate.by_reason,
                    reused_extensions=0 if stats is None else stats.reused_extensions,
                    vision_s=0.0 if camera is None else camera.vision_s,
                    prefill_s=0.0 if camera is None else camera.prefill_s,
                )
            )
        return WorkerStatus(ready=True, model=self.model_name, cameras=tuple(cameras))

    # --- helpers ---------------------------------------------------------------------------

    def _require_memory(self) -> Memory:
        if self._memory is None:
            raise RuntimeError("the worker is not open")
        return self._memory

    def _camera(self, name: str) -> _Camera:
        camera = self._cameras.get(name)
        if camera is None:
            assert self._model is not None and self._settings is not None
            camera = _Camera(VisionChain(name, self._model, self._settings, self._on_frame))
            self._cameras[name] = camera
        return camera
