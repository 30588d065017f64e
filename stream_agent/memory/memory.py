"""The memory of many streams: encode blocks as they arrive, answer questions from them.

A :class:`Memory` (the front) owns, for one language model, the attention sink (the chat
prompt's prefix, whose keys/values every stream and answer share) and one working
:class:`~.window.Window` per stream. Around it, along its seams:

- :mod:`~.tiers`: the RAM tier (:class:`~.ram_cache.BlockCache`, shared), the disk tier
  (:class:`~.store.BlockStore`: block files per stream and one SQLite index), the per-block
  retrieval rows (newest in RAM, older paged from the index) and eviction;
- :mod:`~.planning`: a question's scope (candidate and recent blocks), its prompt suffix, the
  ``top_k`` that fits the model's positions, and its query rows;
- :mod:`~.retrieval`: which blocks each layer retrieves (one module per method, chosen by
  ``MemoryOptions.retrieval`` or per question);
- :mod:`~.compression`: what of its context each layer attends to (``MemoryOptions.compression``);
- :mod:`~.answer`: the layer-by-layer answer pass that uses them.

Encoding a block (:meth:`Memory.append_step` for a video step, :meth:`Memory.append` for text)
lays it out after the stream's previous block, prefills it into the stream's window, writes its
K/V to disk (and RAM), and evicts blocks past the retention horizon or the disk budget. Answering
(:meth:`Memory.answer`) retrieves blocks and generates over the sink, the retrieved blocks and
the stream's recent blocks; all of them are read through the tiers, so an answer depends only on
what is stored, and a new ``Memory`` over the same ``store_dir`` (after a restart) answers the
same question the same way.

A question names one stream, or ``None`` for all of them: then every stream's blocks compete
in one retrieval, each stream's recent blocks are included, and the context is ordered by wall
time across streams.

Not thread-safe: one thread (the engine's) calls it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any, Literal

import torch

from stream_agent.answers import AnswerDelta, AnswerEvent, AnswerFinal, AnswerTimings
from stream_agent.memory.answer import AnswerPass, PreparedAnswer
from stream_agent.memory.check import CheckCondition, CheckPass, CheckResult
from stream_agent.memory.compression import make_compressor
from stream_agent.memory.errors import (
    CorruptBlockError,
    KVMemoryError,
    MemoryClosedError,
    PositionBudgetError,
    QuestionError,
)
from stream_agent.memory.frames import BlockFrame, FrameStore
from stream_agent.memory.heap import release_free_memory
from stream_agent.memory.layout import BlockLayout, step_chunk
from stream_agent.memory.options import MemoryOptions, Retrieval
from stream_agent.memory.planning import PROBES, Planner, clip_moment
from stream_agent.memory.ram_cache import BlockCache
from stream_agent.memory.records import (
    BlockMeta,
    Candidate,
    FrameStamp,
    StreamStatus,
    TimeRange,
)
from stream_agent.memory.retrieval import RetrievalRequest, retriever_class
from stream_agent.memory.runner import LayerRunner
from stream_agent.memory.store import BlockStore
from stream_agent.memory.tiers import StreamState, Tiers
from stream_agent.memory.window import SinkKV, Window
from stream_agent.models.base import LanguageModel, VideoLLM
from stream_agent.models.records import DecodeOptions, LMChunk, VisualTokens

log = logging.getLogger(__name__)

_RETRIES = 3

NO_MOMENTS_NOTE = "no_moments"
"""The note of an answer whose time range holds no stored video (it has no evidence)."""
NO_MOMENTS_TEXT = (
    "Nothing was recorded in the requested time range, so there is nothing to answer from."
)


def model_fingerprint(model: LanguageModel, runner: LayerRunner) -> dict[str, object]:
    """What must match for stored KV to mean anything to ``model``: its layout and weights."""
    spec = model.lm_spec
    weight = runner.layers[0].self_attn.k_proj.weight.detach().float().cpu().contiguous()
    digest = hashlib.sha256(weight.numpy().tobytes()).hexdigest()[:32]
    return {
        "family": getattr(model, "family", type(model).__name__),
        "layers": spec.num_layers,
        "heads": spec.num_heads,
        "kv_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "hidden": spec.hidden_size,
        "rope": spec.rope,
        "rope_theta": spec.rope_theta,
        "dtype": str(model.dtype).removeprefix("torch."),
        "weights": digest,
    }


class Memory:
    """ReKV-style memory of any number of streams over one model (see the module docstring).

    The front: it owns the model's pieces (runner, sink) and each stream's working window, and
    hands storage to :class:`~.tiers.Tiers`, question planning to :class:`~.planning.Planner`,
    block choice to a :mod:`~.retrieval` method and what each layer attends to to a
    :mod:`~.compression` method.
    """

    def __init__(
        self, model: LanguageModel, options: MemoryOptions, *, frames: FrameStore | None = None
    ) -> None:
        self.model = model
        self.options = options
        self.runner = LayerRunner(model)
        spec = model.lm_spec
        self.max_positions = spec.max_positions
        self.position_limit = min(options.position_limit or spec.max_positions, spec.max_positions)
        layout = model.build_prompt(PROBES[0], system=options.system_prompt)
        self.sink = self._compute_sink(layout.prefix_ids)
        store = BlockStore(
            options.store_dir,
            fingerprint=model_fingerprint(model, self.runner),
            store_dtype=options.torch_store_dtype,
            layers=spec.num_layers,
            kv_heads=spec.num_kv_heads,
            head_dim=spec.head_dim,
            hidden=spec.hidden_size,
            position_dims=spec.position_dims,
            sketch_vectors=options.sketch_vectors,
            # the segment being written cannot be freed, so keep it a small share of the budget
            segment_bytes=max(1, min(options.segment_bytes, options.disk_budget_bytes // 16)),
            fsync=options.fsync,
        )
        self.tiers = Tiers(
            store,
            options,
            layers=spec.num_layers,
            keep_sketches=retriever_class(options.retrieval).uses_sketches,
            frames=frames,
        )
        self.planner = Planner(model, options, self.tiers, max_positions=self.max_positions)
        self.checks = CheckPass(
            self.runner, self.sink, self.planner, self.tiers, system_prompt=options.system_prompt
        )
        self._closed = False
        for name in store.stream_names():
            self.tiers.open_stream(name)
        if frames is not None:  # frames whose block a crash (or an old store) left behind
            for name in frames.streams():
                state = self._streams.get(name)
                frames.retain(name, [] if state is None else [m.block_id for m in state.blocks])
        log.info(
            "memory opened in %s: %d stream(s), %d block(s), window %d tokens, top-%d",
            options.store_dir,
            len(self._streams),
            sum(len(s.blocks) for s in self._streams.values()),
            options.window_tokens,
            options.top_k,
        )

    # ---------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def flush(self) -> None:
        """Make everything stored so far durable (each block already is when ``fsync``)."""
        self._check_open()
        self.store.flush()

    def close(self) -> None:
        """Flush and release the store; the memory cannot be used afterwards."""
        if self._closed:
            return
        self._closed = True
        try:
            self.store.flush()
        finally:
            self.store.close()
        log.info("memory closed (%s)", self.options.store_dir)

    def _check_open(self) -> None:
        if self._closed:
            raise MemoryClosedError("the memory is closed; open a new Memory over the store")

    # ------------------------------------------------------------------------------- setup

    @torch.no_grad()
    def _compute_sink(self, prefix_ids: tuple[int, ...]) -> SinkKV:
        """The prefix's K/V through the library's own forward (what the reference path does)."""
        r = self.runner
        if not prefix_ids:
            empty = torch.empty(r.num_layers, r.kv_heads, 0, r.head_dim, dtype=r.dtype)
            return SinkKV((), empty, empty.clone())
        cache: Any = self.model.new_cache()
        self.model.prefill(cache, self.model.text_chunk(prefix_ids, 0))
        keys = torch.stack([cache.layers[i].keys[0] for i in range(r.num_layers)])
        values = torch.stack([cache.layers[i].values[0] for i in range(r.num_layers)])
        return SinkKV(tuple(prefix_ids), keys, values)

    @property
    def store(self) -> BlockStore:
        """The disk tier."""
        return self.tiers.store

    @property
    def ram(self) -> BlockCache:
        """The RAM tier."""
        return self.tiers.ram

    @property
    def disk_reads(self) -> int:
        """Block layers read from disk since the memory opened."""
        return self.tiers.disk_reads

    @property
    def _streams(self) -> dict[str, StreamState]:
        return self.tiers.streams

    def _load(self, cand: Candidate, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tiers.load(cand, layer)

    def _window(self, state: StreamState) -> Window:
        if state.window is None:
            window = Window(
                self.runner,
                self.sink,
                window_tokens=self.options.window_tokens,
                position_limit=self.position_limit,
                sketch_vectors=self.store.sketch_vectors,
            )
            if state.blocks:
                window.restore(self.tiers.recent_kv(state, self.options.window_tokens))
            state.window = window
        return state.window

    # ------------------------------------------------------------------------------ streams

    @property
    def streams(self) -> tuple[str, ...]:
        return tuple(self._streams)

    # ----------------------------------------------------------------------------- encoding

    def append(self, stream: str, chunk: LMChunk, stamp: FrameStamp) -> BlockMeta:
        """Encode a text block of ``stream`` (a new stream starts on first use).

        ``chunk`` is built at position 0 (:func:`~.chunks.text_chunk`); the memory places it
        after the stream's previous block. Returns the stored block's index record.
        """
        self._check_open()
        state = self._streams.get(stream) or self.tiers.open_stream(stream)
        window = self._window(state)

        def place() -> tuple[LMChunk, BlockLayout]:
            at = window.cursor
            placed = LMChunk(chunk.embeds, chunk.positions + at, chunk.next_position + at)
            return placed, BlockLayout("text", placed.positions.cpu(), placed.next_position, at)

        placed, layout = self._fit(window, place)
        return self.tiers.store_block(state, window.encode(placed, layout), stamp)

    def append_step(
        self,
        stream: str,
        tokens: VisualTokens,
        stamp: FrameStamp,
        *,
        keep: torch.Tensor | Sequence[int] | None = None,
        embeds: torch.Tensor | None = None,
        seconds_per_step: float = 1.0,
        frame: BlockFrame | None = None,
    ) -> BlockMeta:
        """Encode one video step of ``stream`` (a new stream starts on first use).

        ``tokens`` are the step's visual tokens; ``keep`` the rows a pruner kept (its
        ``Selection.indices``; None keeps all) and ``embeds`` their merged values when it merged;
        ``seconds_per_step`` the time one step covers; ``frame`` the step's representative frame
        (a JPEG), kept as the block's evidence frame when the memory has a frame store. The
        memory lays the step out after the stream's previous one with the family's own layout
        (``video_step_chunk``; the step's timestamp is ``stamp.pts``). Returns the stored
        block's index record.
        """
        self._check_open()
        model = self.model
        if not isinstance(model, VideoLLM):
            raise KVMemoryError("append_step needs a video model; use append for text blocks")
        state = self._streams.get(stream) or self.tiers.open_stream(stream)
        window = self._window(state)
        kept = None if keep is None else torch.as_tensor(keep, dtype=torch.long).cpu()

        def place() -> tuple[LMChunk, BlockLayout]:
            at = window.cursor
            chunk = step_chunk(
                model,
                tokens,
                at,
                step=window.next_step,
                timestamp=stamp.pts,
                seconds_per_step=seconds_per_step,
                keep=kept,
                embeds=embeds,
            )
            layout = BlockLayout(
                "step",
                chunk.positions.cpu(),
                chunk.next_position,
                at,
                grid=tokens.grid,
                keep=kept,
                timestamp=stamp.pts,
                seconds_per_step=seconds_per_step,
            )
            return chunk, layout

        chunk, layout = self._fit(window, place)
        return self.tiers.store_block(state, window.encode(chunk, layout), stamp, frame)

    def extend_last(self, stream: str, end: FrameStamp) -> BlockMeta | None:
        """Extend ``stream``'s newest block to ``end`` (its ``end_pts``/``end_wall``): nothing
        new was seen since (the change gate held the frames back, or the cacher reused the
        block's frame whole). No encode and no prefill; the block's evidence times cover the
        still period, and the index row is updated at the next append or flush. Returns the
        extended record; None when the stream has no block yet. Times never move back."""
        self._check_open()
        state = self._streams.get(stream)
        if state is None or not state.blocks:
            return None
        last = state.blocks[-1]
        pts_end = max(last.pts_end, float(end.end_pts))
        wall_end = max(last.wall_end, float(end.end_wall))
        if pts_end == last.pts_end and wall_end == last.wall_end:
            return last
        extended = replace(last, pts_end=pts_end, wall_end=wall_end)
        state.blocks[-1] = extended
        self.store.extend_span(state.stream_id, last.block_id, pts_end, wall_end)
        return extended

    def _fit(
        self, window: Window, place: Callable[[], tuple[LMChunk, BlockLayout]]
    ) -> tuple[LMChunk, BlockLayout]:
        """Lay the block out at the window's cursor and make room for it in the window (its
        tokens and its span of positions), re-basing the window first if the block would pass
        the position limit."""
        chunk, layout = place()
        window.make_room(len(chunk), self._end(chunk) - layout.start)
        if self._end(chunk) > self.position_limit:
            window.rebase()
            chunk, layout = place()
            if self._end(chunk) > self.position_limit:
                raise PositionBudgetError(
                    f"the window needs positions up to {self._end(chunk)}, more than the limit "
                    f"{self.position_limit}; lower memory.window_tokens"
                )
        return chunk, layout

    @staticmethod
    def _end(chunk: LMChunk) -> int:
        top = int(chunk.positions.max()) + 1 if len(chunk) else 0
        return max(top, chunk.next_position)

    # ---------------------------------------------------------------------------- answering

    def prepare(
        self,
        question: str,
        *,
        stream: str | None = None,
        time_range: TimeRange | None = None,
        top_k: int | None = None,
        max_new_tokens: int = 128,
        retrieval: Retrieval | None = None,
    ) -> tuple[AnswerPass, PreparedAnswer]:
        """Retrieve and prefill ``question``: the answer pass and its prepared state, to decode
        with :meth:`AnswerPass.decode` (what :meth:`answer` does; tests read the logits).

        ``top_k`` and ``retrieval`` override the options for this question."""
        self._check_open()
        if not question.strip():
            raise QuestionError("the question is empty; ask something")
        k = self.options.top_k if top_k is None else top_k
        if k < 0:
            raise QuestionError("top_k must be >= 0")
        layout = self.model.build_prompt(question, system=self.options.system_prompt)
        if layout.prefix_ids != self.sink.ids:
            raise QuestionError("the chat prompt's prefix changed with the question")
        method = retriever_class(retrieval or self.options.retrieval)
        planner = self.planner
        for attempt in range(_RETRIES):
            candidates, recent = planner.scope(stream, time_range)
            answer_pass = AnswerPass(
                self.runner,
                self.sink,
                candidates=candidates,
                recent=recent,
                top_k=k,
                loader=self.tiers.load,
                compressor=make_compressor(self.options.compression, self.runner),
            )
            suffix, offset, notes = planner.fit_top_k(answer_pass, layout, max_new_tokens)
            rows = planner.question_rows(layout, offset)
            began = time.perf_counter()
            request = RetrievalRequest(
                candidates=tuple(candidates),
                question_embeds=suffix.embeds[rows],
                top_k=answer_pass.top_k,
                rows=self.tiers,
            )
            try:
                retriever = method(request)  # reads the rows it scores (RAM, else the index)
                rows_s = time.perf_counter() - began
                prepared = answer_pass.prefill(
                    suffix,
                    rows,
                    retriever,
                    max_new_tokens=max_new_tokens,
                    position_limit=self.max_positions,
                )
            except CorruptBlockError as exc:
                if attempt == _RETRIES - 1:
                    raise
                log.warning("memory: %s; dropping it and retrying the question", exc)
                self.tiers.drop_corrupt(exc.block if isinstance(exc.block, BlockMeta) else None)
                continue
            return answer_pass, replace(
                prepared, retrieval_s=prepared.retrieval_s + rows_s, notes=notes
            )
        raise AssertionError("unreachable")

    def answer(
        self,
        question: str,
        *,
        stream: str | None = None,
        time_range: TimeRange | None = None,
        top_k: int | None = None,
        options: DecodeOptions | None = None,
        cancel: threading.Event | None = None,
        retrieval: Retrieval | None = None,
    ) -> Iterator[AnswerEvent]:
        """Answer ``question`` from ``stream`` (None: all streams) within ``time_range``.

        Yields :class:`~stream_agent.answers.AnswerDelta` text pieces, then one
        :class:`~stream_agent.answers.AnswerFinal` with the whole text, the token ids, the
        evidence (best first; the streams' names are the cameras') and the timings (from this
        call). ``cancel`` is checked between tokens: once it is set, the final follows at once,
        with ``finish_reason`` ``cancelled``.
        """
        began = time.perf_counter()
        options = options or DecodeOptions()
        reads_before = self.disk_reads
        index_before = self.tiers.index_reads
        if time_range is not None and self._range_is_empty(stream, time_range):
            # nothing was kept in the range: say so rather than answer from other moments
            yield AnswerDelta(NO_MOMENTS_TEXT)
            yield AnswerFinal(
                text=NO_MOMENTS_TEXT,
                evidence=(),
                tokens=0,
                finish_reason="stop",
                timings=AnswerTimings(
                    ttft_s=None,
                    tokens_per_s=None,
                    total_s=time.perf_counter() - began,
                    retrieval_s=0.0,
                    context_tokens=0,
                    blocks_loaded=0,
                    disk_reads=0,
                    index_reads=0,
                ),
                notes=(NO_MOMENTS_NOTE,),
            )
            return
        answer_pass, prepared = self.prepare(
            question,
            stream=stream,
            time_range=time_range,
            top_k=top_k,
            max_new_tokens=options.max_new_tokens,
            retrieval=retrieval,
        )
        token_ids: list[int] = []
        text: list[str] = []
        first: float | None = None
        last = began
        reason: Literal["stop", "length", "cancelled"] = "length"
        for step in answer_pass.decode(prepared, options):
            now = time.perf_counter()
            if first is None:
                first = now
            last = now
            token_ids.append(step.token_id)
            if step.text:
                text.append(step.text)
                yield AnswerDelta(step.text)
            if step.finished:
                reason = "stop" if step.stopped else "length"
                break
            if cancel is not None and cancel.is_set():
                reason = "cancelled"
                break
        generated = len(token_ids)
        rate = (generated - 1) / (last - first) if first is not None and last > first else None
        evidence, notes = prepared.evidence, prepared.notes
        if time_range is not None:  # a still scene's block is cited for the range's part only
            evidence = tuple(clip_moment(m, time_range) for m in evidence)
        retrieval_s, context_tokens = prepared.retrieval_s, prepared.context_tokens
        blocks_loaded = prepared.blocks_loaded
        del answer_pass, prepared  # the per-layer contexts: free them, then hand the pages back
        release_free_memory()
        timings = AnswerTimings(
            ttft_s=None if first is None else first - began,
            tokens_per_s=rate,
            total_s=time.perf_counter() - began,
            retrieval_s=retrieval_s,
            context_tokens=context_tokens,
            blocks_loaded=blocks_loaded,
            disk_reads=self.disk_reads - reads_before,
            index_reads=self.tiers.index_reads - index_before,
        )
        yield AnswerFinal(
            text="".join(text),
            evidence=evidence,
            tokens=generated,
            finish_reason=reason,
            timings=timings,
            token_ids=tuple(token_ids),
            notes=notes,
        )

    def _range_is_empty(self, stream: str | None, time_range: TimeRange) -> bool:
        """True when ``stream`` (None: every stream) keeps no block inside ``time_range``."""
        self._check_open()
        candidates, recent = self.planner.scope(stream, time_range)
        return not candidates and not recent

    def check(self, stream: str, conditions: Sequence[CheckCondition]) -> list[CheckResult]:
        """Score yes/no ``conditions`` over ``stream``'s recent blocks in ONE forward (no
        decoding; see :mod:`~.check`): one :class:`CheckResult` per condition, in order."""
        self._check_open()
        for attempt in range(_RETRIES):
            try:
                return self.checks.run(stream, conditions)
            except CorruptBlockError as exc:
                if attempt == _RETRIES - 1:
                    raise
                log.warning("memory: %s; dropping it and retrying the check", exc)
                self.tiers.drop_corrupt(exc.block if isinstance(exc.block, BlockMeta) else None)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------------------- status

    def status(self) -> tuple[StreamStatus, ...]:
        """Per-stream sizes and the newest moment held (cheap: no disk access)."""
        out = []
        for state in self._streams.values():
            blocks = state.blocks
            window = state.window
            ram = self.tiers.index_bytes(state)
            ram += self.ram.stream_bytes(state.stream_id)
            if window is not None:
                ram += window.nbytes
            out.append(
                StreamStatus(
                    stream=state.name,
                    blocks=len(blocks),
                    tokens=sum(m.tokens for m in blocks),
                    window_tokens=window.live_tokens if window is not None else 0,
                    ram_bytes=ram,
                    disk_bytes=self.tiers.stream_disk_bytes(state),
                    frames_encoded=state.frames_encoded,
                    oldest_wall=blocks[0].wall_start if blocks else None,
                    last_pts=blocks[-1].pts_end if blocks else None,
                    last_wall=blocks[-1].wall_end if blocks else None,
                )
            )
        return tuple(out)

    @property
    def disk_bytes(self) -> int:
        """All block files, their evidence frames and the index."""
        return self.tiers.segment_bytes() + self.store.index_bytes()

    @property
    def ram_bytes(self) -> int:
        """RAM held by the memory: windows, the block cache, the retrieval rows kept in RAM
        and the sink."""
        total = self.ram.nbytes + 2 * self.sink.keys.numel() * self.sink.keys.element_size()
        for state in self._streams.values():
            total += self.tiers.index_bytes(state)
            if state.window is not None:
                total += state.window.nbytes
        return total
