"""The memory of many streams: encode blocks as they arrive, answer questions from them.

A :class:`Memory` owns, for one language model, the attention sink (the chat prompt's prefix,
whose keys/values every stream and answer share), one working :class:`~.window.Window` per
stream, the RAM tier (:class:`~.ram_cache.BlockCache`, shared) and the disk tier
(:class:`~.store.BlockStore`: block files per stream and one SQLite index).

Encoding a block (:meth:`Memory.append_step` for a video step, :meth:`Memory.append` for text)
lays it out after the stream's previous block, prefills it into the stream's window, writes its
K/V to disk (and RAM), and evicts blocks past the retention horizon or the disk budget. Answering
(:meth:`Memory.answer`) retrieves blocks (per layer with each layer's question query, ReKV's
way, or by embedding max-sim, see ``MemoryOptions.retrieval``) and generates over the sink, the
retrieved blocks and the stream's recent blocks (see :mod:`~.answer`); all of them are read
through the tiers, so an answer depends only on what is stored, and a new ``Memory`` over the
same ``store_dir`` (after a restart) answers the same question the same way.

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
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from stream_agent.memory.answer import AnswerPass, Candidate, PreparedAnswer
from stream_agent.memory.errors import (
    CorruptBlockError,
    KVMemoryError,
    MemoryClosedError,
    PositionBudgetError,
    QuestionError,
    UnknownStreamError,
)
from stream_agent.memory.frames import BlockFrame, FrameStore
from stream_agent.memory.heap import release_free_memory
from stream_agent.memory.layout import BlockLayout, step_chunk
from stream_agent.memory.options import MemoryOptions, Retrieval
from stream_agent.memory.ram_cache import BlockCache
from stream_agent.memory.records import (
    AnswerDelta,
    AnswerEvent,
    AnswerFinal,
    AnswerTimings,
    BlockMeta,
    EncodedBlock,
    FrameStamp,
    StreamStatus,
    TimeRange,
)
from stream_agent.memory.runner import LayerRunner
from stream_agent.memory.sketch import max_sim
from stream_agent.memory.store import BlockStore
from stream_agent.memory.window import SinkKV, Window
from stream_agent.models.base import LanguageModel, VideoLLM
from stream_agent.models.records import DecodeOptions, LMChunk, PromptLayout, VisualTokens

log = logging.getLogger(__name__)

_PROBES = ("0", "1")
_RETRIES = 3

NO_MOMENTS_NOTE = "no_moments"
"""The note of an answer whose time range holds no stored video (it has no evidence)."""
NO_MOMENTS_TEXT = (
    "Nothing was recorded in the requested time range, so there is nothing to answer from."
)


class RowTable:
    """Per-block rows of a stream (representative keys ``(blocks, layers, dim)``, sketches
    ``(blocks, vectors, hidden)``), aligned with its blocks; grows by doubling and drops from
    the front (eviction is oldest first) without copying."""

    def __init__(self, initial: torch.Tensor) -> None:
        self._data = initial.clone()
        self._start = 0
        self._end = int(initial.shape[0])

    def view(self) -> torch.Tensor:
        return self._data[self._start : self._end]

    def append(self, row: torch.Tensor) -> None:
        if self._end == self._data.shape[0]:
            live = self.view()
            capacity = max(16, 2 * int(live.shape[0]))
            data = torch.empty((capacity, *self._data.shape[1:]), dtype=self._data.dtype)
            data[: live.shape[0]] = live
            self._data, self._start, self._end = data, 0, int(live.shape[0])
        self._data[self._end] = row
        self._end += 1

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (boolean over the live rows)."""
        live = self.view()
        if bool(rows.all()):
            return
        first_kept = int(rows.float().argmax()) if bool(rows.any()) else int(rows.shape[0])
        if bool(rows[first_kept:].all()):
            self._start += first_kept
            return
        self._data = live[rows].clone()
        self._start, self._end = 0, int(self._data.shape[0])

    @property
    def nbytes(self) -> int:
        return self._data.numel() * self._data.element_size()


@dataclass(slots=True)
class _Stream:
    name: str
    stream_id: int
    blocks: list[BlockMeta]
    reps: RowTable
    sketches: RowTable
    next_block_id: int
    window: Window | None = None
    frames_encoded: int = 0


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
    """ReKV-style memory of any number of streams over one model (see the module docstring)."""

    def __init__(
        self, model: LanguageModel, options: MemoryOptions, *, frames: FrameStore | None = None
    ) -> None:
        self.model = model
        self.options = options
        #: Evidence JPEGs of the stored blocks (one per block, deleted with it, counted in the
        #: disk budget); None keeps none.
        self.frames = frames
        self.runner = LayerRunner(model)
        spec = model.lm_spec
        self.max_positions = spec.max_positions
        self.position_limit = min(options.position_limit or spec.max_positions, spec.max_positions)
        layout = model.build_prompt(_PROBES[0], system=options.system_prompt)
        self.sink = self._compute_sink(layout.prefix_ids)
        self.store = BlockStore(
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
        self.ram = BlockCache(options.ram_budget_bytes)
        self._streams: dict[str, _Stream] = {}
        self._closed = False
        self._over_budget_warned = False
        self.disk_reads = 0
        for name in self.store.stream_names():
            self._open_stream(name)
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

    def _open_stream(self, name: str) -> _Stream:
        loaded = self.store.open_stream(name)
        state = _Stream(
            name=name,
            stream_id=loaded.stream_id,
            blocks=list(loaded.blocks),
            reps=RowTable(loaded.rep_keys),
            sketches=RowTable(loaded.sketches),
            next_block_id=loaded.next_block_id,
        )
        self._streams[name] = state
        return state

    def _window(self, state: _Stream) -> Window:
        if state.window is None:
            window = Window(
                self.runner,
                self.sink,
                window_tokens=self.options.window_tokens,
                position_limit=self.position_limit,
                sketch_vectors=self.store.sketch_vectors,
            )
            if state.blocks:
                window.restore(self._recent_kv(state))
            state.window = window
        return state.window

    def _recent_kv(self, state: _Stream) -> list[tuple[BlockLayout, torch.Tensor, torch.Tensor]]:
        """The newest stored blocks (up to the window's size), whole, for a restarted window."""
        picked: list[BlockMeta] = []
        total = 0
        for meta in reversed(state.blocks):
            if total + meta.tokens > self.options.window_tokens:
                break
            picked.append(meta)
            total += meta.tokens
        out = []
        for meta in reversed(picked):
            try:
                layers = self.store.read_layers(meta, range(self.runner.num_layers))
            except CorruptBlockError:
                log.warning(
                    "memory: block %d of %r is corrupt; skipped", meta.block_id, meta.stream
                )
                continue
            keys = torch.stack([layers[i][0] for i in range(self.runner.num_layers)])
            values = torch.stack([layers[i][1] for i in range(self.runner.num_layers)])
            out.append((meta.layout, keys, values))
        return out

    # ------------------------------------------------------------------------------ streams

    @property
    def streams(self) -> tuple[str, ...]:
        return tuple(self._streams)

    def _state(self, stream: str) -> _Stream:
        state = self._streams.get(stream)
        if state is None:
            known = ", ".join(sorted(self._streams)) or "none yet"
            raise UnknownStreamError(f"the memory has no stream {stream!r} (streams: {known})")
        return state

    # ----------------------------------------------------------------------------- encoding

    def append(self, stream: str, chunk: LMChunk, stamp: FrameStamp) -> BlockMeta:
        """Encode a text block of ``stream`` (a new stream starts on first use).

        ``chunk`` is built at position 0 (:func:`~.chunks.text_chunk`); the memory places it
        after the stream's previous block. Returns the stored block's index record.
        """
        self._check_open()
        state = self._streams.get(stream) or self._open_stream(stream)
        window = self._window(state)

        def place() -> tuple[LMChunk, BlockLayout]:
            at = window.cursor
            placed = LMChunk(chunk.embeds, chunk.positions + at, chunk.next_position + at)
            return placed, BlockLayout("text", placed.positions.cpu(), placed.next_position, at)

        placed, layout = self._fit(window, place)
        return self._store(state, window.encode(placed, layout), stamp)

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
        state = self._streams.get(stream) or self._open_stream(stream)
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
        return self._store(state, window.encode(chunk, layout), stamp, frame)

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

    def _store(
        self,
        state: _Stream,
        encoded: EncodedBlock,
        stamp: FrameStamp,
        frame: BlockFrame | None = None,
    ) -> BlockMeta:
        dtype = self.store.dtype
        keys = encoded.keys.to("cpu", dtype)
        values = encoded.values.to("cpu", dtype)
        rep = encoded.rep_keys.to(dtype)
        sketch = encoded.sketch.to(dtype)
        meta = self.store.append(
            state.stream_id,
            state.next_block_id,
            stamp,
            layout=encoded.layout,
            rep_keys=rep,
            sketch=sketch,
            keys=keys,
            values=values,
        )
        state.next_block_id += 1
        state.blocks.append(meta)
        state.reps.append(rep)
        state.sketches.append(sketch)
        state.frames_encoded += 1
        if frame is not None and self.frames is not None and meta.tokens:
            try:
                self.frames.put(state.name, meta.block_id, frame)
            except OSError as exc:  # the block is stored; only its picture is missing
                log.warning(
                    "memory: the evidence frame of %r could not be written: %s", state.name, exc
                )
        if meta.tokens:
            for layer in range(self.runner.num_layers):
                self.ram.put(
                    (state.stream_id, meta.block_id, layer),
                    keys[layer].clone(),
                    values[layer].clone(),
                )
        self._evict()
        return meta

    # ----------------------------------------------------------------------------- eviction

    def _protected(self, state: _Stream) -> int:
        """How many of the newest blocks eviction must leave (the recent ones answers use)."""
        return max(1, self.options.recent_blocks)

    def _drop(self, state: _Stream, doomed: list[BlockMeta]) -> None:
        if not doomed:
            return
        ids = {m.block_id for m in doomed}
        self.store.delete(state.stream_id, doomed)
        if self.frames is not None:
            self.frames.delete(state.name, ids)
        for meta in doomed:
            self.ram.discard_block(state.stream_id, meta.block_id, self.runner.num_layers)
        keep = torch.tensor([m.block_id not in ids for m in state.blocks], dtype=torch.bool)
        state.reps.keep(keep)
        state.sketches.keep(keep)
        state.blocks = [m for m in state.blocks if m.block_id not in ids]

    def _evict(self) -> None:
        """Evict past the retention horizon (every stream, so that a camera gone offline ages
        too) and down to the disk budget (oldest first, whole segment files)."""
        newest = max((s.blocks[-1].wall_end for s in self._streams.values() if s.blocks), default=0)
        cutoff = newest - self.options.retention_s
        for owner in self._streams.values():
            evictable = owner.blocks[: max(0, len(owner.blocks) - self._protected(owner))]
            stale = []
            for meta in evictable:
                if meta.wall_end >= cutoff:
                    break
                stale.append(meta)
            if stale:
                self._drop(owner, stale)
                log.info(
                    "memory: %d block(s) of %r passed the retention horizon", len(stale), owner.name
                )
        budget = self.options.disk_budget_bytes
        while self._segment_bytes() > budget:
            victim = self._oldest_evictable()
            if victim is None:
                if not self._over_budget_warned:
                    log.warning(
                        "memory: over the disk budget, but only recent blocks and the segments "
                        "being written are left; raise memory.disk_budget"
                    )
                    self._over_budget_warned = True
                return
            owner, meta = victim
            segment = [
                m
                for m in owner.blocks[: max(0, len(owner.blocks) - self._protected(owner))]
                if m.segment == meta.segment
            ]
            self._drop(owner, segment)

    def _oldest_evictable(self) -> tuple[_Stream, BlockMeta] | None:
        """The oldest block whose eviction frees its segment file: not one of the recent ones,
        and not in the segment its stream is appending to (whose bytes stay until it rolls
        over)."""
        best: tuple[_Stream, BlockMeta] | None = None
        for state in self._streams.values():
            if len(state.blocks) <= self._protected(state):
                continue
            meta = state.blocks[0]
            if meta.segment == self.store.active_segment(state.stream_id):
                continue
            if best is None or meta.wall_start < best[1].wall_start:
                best = (state, meta)
        return best

    def _segment_bytes(self) -> int:
        """Bytes the disk budget covers: the block files and the blocks' evidence frames."""
        total = sum(self.store.disk_bytes(s.stream_id) for s in self._streams.values())
        if self.frames is not None:
            total += sum(self.frames.stream_bytes(s.name) for s in self._streams.values())
        return total

    def _stream_disk_bytes(self, state: _Stream) -> int:
        frames = 0 if self.frames is None else self.frames.stream_bytes(state.name)
        return self.store.disk_bytes(state.stream_id) + frames

    # ---------------------------------------------------------------------------- answering

    def _load(self, cand: Candidate, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = (cand.stream_id, cand.meta.block_id, layer)
        hit = self.ram.get(key)
        if hit is not None:
            return hit
        keys, values = self.store.read_layers(cand.meta, [layer])[layer]
        self.disk_reads += 1
        self.ram.put(key, keys, values)
        return keys, values

    def _question_rows(self, layout: PromptLayout, question: str, offset: int) -> slice:
        """The rows of the question's own tokens in the suffix chunk (``query_rows="question"``):
        what differs between this question's suffix and probe questions' suffixes."""
        total = offset + len(layout.suffix_ids)
        if self.options.query_rows == "prompt":
            return slice(0, total)
        ids = layout.suffix_ids
        head, tail = len(ids), len(ids)
        for probe in _PROBES:
            other = self.model.build_prompt(probe, system=self.options.system_prompt).suffix_ids
            same = 0
            while same < min(len(ids), len(other)) and ids[same] == other[same]:
                same += 1
            head = min(head, same)
            same = 0
            while same < min(len(ids), len(other)) - head and ids[-1 - same] == other[-1 - same]:
                same += 1
            tail = min(tail, same)
        start, end = head, len(ids) - tail
        if end <= start:
            return slice(0, total)
        return slice(offset + start, offset + end)

    def _suffix(self, layout: PromptLayout, start: int) -> tuple[LMChunk, int]:
        parts: list[LMChunk] = []
        position = start
        if isinstance(self.model, VideoLLM):
            end = self.model.video_end_chunk(position)
            if len(end):
                parts.append(end)
            position = end.next_position
        offset = sum(len(p) for p in parts)
        parts.append(self.model.text_chunk(layout.suffix_ids, position))
        return LMChunk.concat(parts), offset

    def _scope(
        self, stream: str | None, time_range: TimeRange | None
    ) -> tuple[list[Candidate], torch.Tensor, torch.Tensor, list[Candidate]]:
        """The candidate blocks (with their representative keys and sketches) and the recent
        blocks of ``stream`` (None: all streams) within ``time_range``.

        Only blocks that lie wholly inside the range are used, the recent ones included: the
        recent blocks are the newest ``recent_blocks`` of each stream *within* the range, so
        that an answer bounded to the past neither sees nor cites anything after it."""
        states = [self._state(stream)] if stream is not None else list(self._streams.values())
        candidates: list[Candidate] = []
        rows: list[torch.Tensor] = []
        sketch_rows: list[torch.Tensor] = []
        recent: list[Candidate] = []
        since = time_range.since if time_range else None
        until = time_range.until if time_range else None
        for state in states:
            filled = [
                i
                for i, m in enumerate(state.blocks)
                if m.tokens > 0
                and (since is None or m.wall_start >= since)
                and (until is None or m.wall_end <= until)
            ]
            recent_count = min(self.options.recent_blocks, len(filled))
            newest = set(filled[len(filled) - recent_count :]) if recent_count else set()
            picked = []
            for i in filled:
                meta = state.blocks[i]
                if i in newest:
                    recent.append(Candidate(state.stream_id, meta))
                else:
                    candidates.append(Candidate(state.stream_id, meta))
                    picked.append(i)
            if picked:
                index = torch.tensor(picked)
                rows.append(state.reps.view()[index])
                sketch_rows.append(state.sketches.view()[index])
        r = self.runner
        store = self.store
        keys = (
            torch.cat(rows)
            if rows
            else torch.empty(0, r.num_layers, r.kv_heads * r.head_dim, dtype=store.dtype)
        )
        sketches = (
            torch.cat(sketch_rows)
            if sketch_rows
            else torch.empty(0, store.sketch_vectors, r.spec.hidden_size, dtype=store.dtype)
        )
        return candidates, keys, sketches, recent

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
        mode = retrieval or self.options.retrieval
        for attempt in range(_RETRIES):
            candidates, keys, sketches, recent = self._scope(stream, time_range)
            answer_pass = AnswerPass(
                self.runner,
                self.sink,
                candidates=candidates,
                candidate_keys=keys,
                recent=recent,
                top_k=k,
                loader=self._load,
            )
            suffix, offset, notes = self._fit_top_k(answer_pass, layout, max_new_tokens)
            rows = self._question_rows(layout, question, offset)
            if mode != "internal":
                fitted = answer_pass.top_k
                answer_pass.shared_scores = max_sim(suffix.embeds[rows], sketches)
                answer_pass.shared_count = fitted if mode == "embedding" else (fitted + 1) // 2
            try:
                prepared = answer_pass.prefill(
                    suffix, rows, max_new_tokens=max_new_tokens, position_limit=self.max_positions
                )
            except CorruptBlockError as exc:
                if attempt == _RETRIES - 1:
                    raise
                log.warning("memory: %s; dropping it and retrying the question", exc)
                self._drop_corrupt(exc.block if isinstance(exc.block, BlockMeta) else None)
                continue
            return answer_pass, replace(prepared, notes=notes)
        raise AssertionError("unreachable")

    def _fit_top_k(
        self, answer_pass: AnswerPass, layout: PromptLayout, max_new_tokens: int
    ) -> tuple[LMChunk, int, tuple[str, ...]]:
        """The question's suffix, after lowering the pass's ``top_k`` (then leaving out the
        oldest recent blocks) where the blocks, the question and the answer would not fit the
        model's positions (wide blocks, many streams, a long question): fewer blocks rather than
        no answer, and a note that says so. A question that does not fit even alone is refused
        (:class:`QuestionError`, ``bad_request``)."""
        asked = answer_pass.top_k
        recent = len(answer_pass.recent)
        while True:
            suffix, offset = self._suffix(layout, answer_pass.start_position())
            if suffix.next_position + max_new_tokens <= self.max_positions:
                break
            if answer_pass.top_k > 0:
                answer_pass.top_k = answer_pass.top_k * 3 // 4
            elif answer_pass.recent:
                answer_pass.recent = answer_pass.recent[1:]
            else:
                raise QuestionError(
                    f"the question is too long for this model: with its answer "
                    f"({max_new_tokens} tokens) it needs {suffix.next_position + max_new_tokens} "
                    f"positions, the model has {self.max_positions}; ask a shorter question"
                )
        notes: tuple[str, ...] = ()
        if answer_pass.top_k < asked or len(answer_pass.recent) < recent:
            log.warning(
                "memory: top_k lowered from %d to %d and recent blocks from %d to %d for this "
                "question so that its blocks fit the model's %d positions",
                asked,
                answer_pass.top_k,
                recent,
                len(answer_pass.recent),
                self.max_positions,
            )
            notes = (
                f"fewer moments than usual fitted beside this question in the model's "
                f"{self.max_positions} positions (retrieved {answer_pass.top_k} of {asked}, "
                f"recent {len(answer_pass.recent)} of {recent}); a shorter question sees more",
            )
        return suffix, offset, notes

    def _drop_corrupt(self, block: BlockMeta | None) -> None:
        """Drop ``block``, whose stored bytes failed their checksum; without one (a segment file
        that could not be opened), every block that fails a read."""
        if block is not None:
            for state in self._streams.values():
                if state.name == block.stream:
                    self._drop(state, [m for m in state.blocks if m.block_id == block.block_id])
            return
        for state in self._streams.values():
            bad = []
            for meta in state.blocks:
                if meta.tokens == 0:
                    continue
                try:
                    self.store.read_layers(meta, range(self.runner.num_layers))
                except CorruptBlockError:
                    bad.append(meta)
            self._drop(state, bad)

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

        Yields :class:`AnswerDelta` text pieces, then one :class:`AnswerFinal` with the whole
        text, the evidence and the timings. ``cancel`` is checked between tokens.
        """
        began = time.perf_counter()
        options = options or DecodeOptions()
        reads_before = self.disk_reads
        if time_range is not None and self._range_is_empty(stream, time_range):
            # nothing was kept in the range: say so rather than answer from other moments
            yield AnswerDelta(NO_MOMENTS_TEXT)
            yield AnswerFinal(
                text=NO_MOMENTS_TEXT,
                token_ids=(),
                evidence=(),
                timings=AnswerTimings(
                    ttft_s=None,
                    retrieval_s=0.0,
                    tokens_per_s=None,
                    total_s=time.perf_counter() - began,
                    context_tokens=0,
                    blocks_loaded=0,
                    disk_reads=0,
                ),
                finish_reason="stop",
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
        timings = AnswerTimings(
            ttft_s=None if first is None else first - began,
            retrieval_s=prepared.retrieval_s,
            tokens_per_s=rate,
            total_s=time.perf_counter() - began,
            context_tokens=prepared.context_tokens,
            blocks_loaded=prepared.blocks_loaded,
            disk_reads=self.disk_reads - reads_before,
        )
        evidence, notes = prepared.evidence, prepared.notes
        del answer_pass, prepared  # the per-layer contexts: free them, then hand the pages back
        release_free_memory()
        yield AnswerFinal(
            text="".join(text),
            token_ids=tuple(token_ids),
            evidence=evidence,
            timings=timings,
            finish_reason=reason,
            notes=notes,
        )

    def _range_is_empty(self, stream: str | None, time_range: TimeRange) -> bool:
        """True when ``stream`` (None: every stream) keeps no block inside ``time_range``."""
        self._check_open()
        candidates, _, _, recent = self._scope(stream, time_range)
        return not candidates and not recent

    # ------------------------------------------------------------------------------- status

    def status(self) -> tuple[StreamStatus, ...]:
        """Per-stream sizes and the newest moment held (cheap: no disk access)."""
        out = []
        for state in self._streams.values():
            blocks = state.blocks
            window = state.window
            ram = state.reps.nbytes + state.sketches.nbytes
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
                    disk_bytes=self._stream_disk_bytes(state),
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
        return self._segment_bytes() + self.store.index_bytes()

    @property
    def ram_bytes(self) -> int:
        """RAM held by the memory: windows, the block cache, representative keys and the sink."""
        total = self.ram.nbytes + 2 * self.sink.keys.numel() * self.sink.keys.element_size()
        for state in self._streams.values():
            total += state.reps.nbytes + state.sketches.nbytes
            if state.window is not None:
                total += state.window.nbytes
        return total
