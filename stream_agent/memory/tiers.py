"""The storage tiers of a :class:`~stream_agent.memory.memory.Memory` and their eviction.

Every stored block lives on disk (:class:`~.store.BlockStore`: segment files per stream and one
SQLite index) and, while it is recently used, in the RAM tier (:class:`~.ram_cache.BlockCache`,
an LRU of block layers bounded in bytes, shared by all streams). :class:`Tiers` writes encoded
blocks to both, serves one layer of one block to an answer (RAM first, else disk), and evicts
blocks past the retention horizon or the disk budget.

Retrieval rows. Each block also has a representative key per layer (~6 KB for LLaVA-OV-0.5B)
and an embedding sketch (~14 KB), which the index stores with it. Kept in RAM for every block,
they would grow the process by ~20 KB per frame for as long as the stream runs. So each stream
keeps them in a :class:`PagedRows` per column: the newest ``index_ram_blocks`` blocks' rows in
RAM (what encoding just wrote, cheap to reach), older ones read back from the index at question
time in batched primary-key range scans; sketches are kept in RAM at all only when the memory's
retrieval mode uses them. Both ways hand a retriever the same bytes, so retrieval is the same.

Not thread-safe: the memory's one thread calls it.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from stream_agent.memory.errors import CorruptBlockError, UnknownStreamError
from stream_agent.memory.frames import BlockFrame, FrameStore
from stream_agent.memory.layout import BlockLayout
from stream_agent.memory.options import MemoryOptions
from stream_agent.memory.ram_cache import BlockCache
from stream_agent.memory.records import BlockMeta, Candidate, EncodedBlock, FrameStamp
from stream_agent.memory.store import BlockStore
from stream_agent.memory.window import Window

log = logging.getLogger(__name__)


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

    def __len__(self) -> int:
        return self._end - self._start

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


class PagedRows:
    """One retrieval column (``"rep_keys"`` or ``"sketch"``) of one stream's blocks: the rows of
    the newest ``resident`` blocks in a :class:`RowTable`, older ones read from the index on
    demand (see the module docstring). RAM stays within ``max(16, 2 * resident)`` rows however
    long the stream runs."""

    def __init__(
        self,
        store: BlockStore,
        stream_id: int,
        column: str,
        resident: int,
        block_ids: Sequence[int],
        rows: torch.Tensor,
    ) -> None:
        self.store = store
        self.stream_id = stream_id
        self.column = column
        self.resident = resident
        self._ids = list(block_ids)  # block ids of the rows in RAM, ascending
        self._table = RowTable(rows)
        #: Rows read from the index since the memory opened.
        self.index_reads = 0
        self._trim()

    def _trim(self) -> None:
        extra = len(self._ids) - self.resident
        if extra > 0:
            keep = torch.ones(len(self._ids), dtype=torch.bool)
            keep[:extra] = False
            self._table.keep(keep)
            del self._ids[:extra]

    def append(self, block_id: int, row: torch.Tensor) -> None:
        """The row of a new (newest) block."""
        if self.resident == 0:
            return
        self._table.append(row)
        self._ids.append(block_id)
        self._trim()

    def discard(self, block_ids: set[int]) -> None:
        """Forget the rows of evicted blocks."""
        if not self._ids or not block_ids:
            return
        keep = torch.tensor([i not in block_ids for i in self._ids], dtype=torch.bool)
        self._table.keep(keep)
        self._ids = [i for i in self._ids if i not in block_ids]

    def gather(self, block_ids: Sequence[int]) -> torch.Tensor:
        """The rows of ``block_ids`` (ascending, all of them stored blocks), in that order."""
        ids = list(block_ids)
        first_resident = self._ids[0] if self._ids else None
        split = len(ids) if first_resident is None else bisect.bisect_left(ids, first_resident)
        parts: list[torch.Tensor] = []
        if split:
            parts.append(self.store.read_rows(self.stream_id, self.column, ids[:split]))
            self.index_reads += split
        if split < len(ids):
            where = [bisect.bisect_left(self._ids, i) for i in ids[split:]]
            parts.append(self._table.view()[torch.tensor(where)])
        if not parts:
            return self._table.view()[:0].clone()
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    @property
    def nbytes(self) -> int:
        return self._table.nbytes

    def __len__(self) -> int:
        return len(self._ids)


@dataclass(slots=True)
class StreamState:
    """One stream as the memory holds it: its blocks' index records (oldest first), their
    retrieval rows, and its working window (created on first use)."""

    name: str
    stream_id: int
    blocks: list[BlockMeta]
    reps: PagedRows
    sketches: PagedRows
    next_block_id: int
    window: Window | None = None
    frames_encoded: int = 0


class Tiers:
    """RAM and disk tiers of one memory's streams, with eviction (see the module docstring)."""

    def __init__(
        self,
        store: BlockStore,
        options: MemoryOptions,
        *,
        layers: int,
        keep_sketches: bool,
        frames: FrameStore | None = None,
    ) -> None:
        self.store = store
        #: Evidence JPEGs of the stored blocks (one per block, deleted with it, counted in the
        #: disk budget); None keeps none.
        self.frames = frames
        self.options = options
        self.layers = layers
        self.keep_sketches = keep_sketches
        self.ram = BlockCache(options.ram_budget_bytes)
        self.streams: dict[str, StreamState] = {}
        self._over_budget_warned = False
        self.disk_reads = 0

    # ------------------------------------------------------------------------------ streams

    def open_stream(self, name: str) -> StreamState:
        resident = self.options.index_ram_blocks
        sketch_rows = resident if self.keep_sketches else 0
        loaded = self.store.open_stream(name, rep_rows=resident, sketch_rows=sketch_rows)
        ids = [m.block_id for m in loaded.blocks]
        state = StreamState(
            name=name,
            stream_id=loaded.stream_id,
            blocks=list(loaded.blocks),
            reps=PagedRows(
                self.store,
                loaded.stream_id,
                "rep_keys",
                resident,
                ids[len(ids) - int(loaded.rep_keys.shape[0]) :],
                loaded.rep_keys,
            ),
            sketches=PagedRows(
                self.store,
                loaded.stream_id,
                "sketch",
                sketch_rows,
                ids[len(ids) - int(loaded.sketches.shape[0]) :],
                loaded.sketches,
            ),
            next_block_id=loaded.next_block_id,
        )
        self.streams[name] = state
        return state

    def state(self, stream: str) -> StreamState:
        state = self.streams.get(stream)
        if state is None:
            known = ", ".join(sorted(self.streams)) or "none yet"
            raise UnknownStreamError(f"the memory has no stream {stream!r} (streams: {known})")
        return state

    def recent_kv(
        self, state: StreamState, window_tokens: int
    ) -> list[tuple[BlockLayout, torch.Tensor, torch.Tensor]]:
        """The newest stored blocks (up to the window's size), whole, for a restarted window."""
        picked: list[BlockMeta] = []
        total = 0
        for meta in reversed(state.blocks):
            if total + meta.tokens > window_tokens:
                break
            picked.append(meta)
            total += meta.tokens
        out = []
        for meta in reversed(picked):
            try:
                layers = self.store.read_layers(meta, range(self.layers))
            except CorruptBlockError:
                log.warning(
                    "memory: block %d of %r is corrupt; skipped", meta.block_id, meta.stream
                )
                continue
            keys = torch.stack([layers[i][0] for i in range(self.layers)])
            values = torch.stack([layers[i][1] for i in range(self.layers)])
            out.append((meta.layout, keys, values))
        return out

    # ------------------------------------------------------------------------------ writing

    def store_block(
        self,
        state: StreamState,
        encoded: EncodedBlock,
        stamp: FrameStamp,
        frame: BlockFrame | None = None,
    ) -> BlockMeta:
        """Write an encoded block to disk and RAM (and ``frame``, its evidence JPEG, to the
        frame store), then evict."""
        dtype = self.store.dtype
        # what reading the block back gives (the 8-bit codec's round trip, or a cast): the RAM
        # tier must hold the same values as the disk tier
        raw_keys, raw_values = encoded.keys.to("cpu"), encoded.values.to("cpu")
        keys, values = self.store.as_stored(raw_keys, raw_values)
        rep = encoded.rep_keys.to(dtype)
        sketch = encoded.sketch.to(dtype)
        meta = self.store.append(
            state.stream_id,
            state.next_block_id,
            stamp,
            layout=encoded.layout,
            rep_keys=rep,
            sketch=sketch,
            keys=raw_keys,
            values=raw_values,
        )
        state.next_block_id += 1
        state.blocks.append(meta)
        state.reps.append(meta.block_id, rep)
        state.sketches.append(meta.block_id, sketch)
        state.frames_encoded += 1
        if frame is not None and self.frames is not None and meta.tokens:
            try:
                self.frames.put(state.name, meta.block_id, frame)
            except OSError as exc:  # the block is stored; only its picture is missing
                log.warning(
                    "memory: the evidence frame of %r could not be written: %s", state.name, exc
                )
        if meta.tokens:
            for layer in range(self.layers):
                self.ram.put(
                    (state.stream_id, meta.block_id, layer),
                    keys[layer].clone(),
                    values[layer].clone(),
                )
        self.evict()
        return meta

    # ------------------------------------------------------------------------------ reading

    def load(self, cand: Candidate, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One layer of one block: from RAM, else from disk (then kept in RAM)."""
        key = (cand.stream_id, cand.meta.block_id, layer)
        hit = self.ram.get(key)
        if hit is not None:
            return hit
        keys, values = self.store.read_layers(cand.meta, [layer])[layer]
        self.disk_reads += 1
        self.ram.put(key, keys, values)
        return keys, values

    def _rows(self, column: str, candidates: Sequence[Candidate]) -> torch.Tensor:
        by_id = {s.stream_id: s for s in self.streams.values()}
        # runs of ascending block ids of one stream (how the planner lists candidates)
        runs: list[tuple[int, list[int]]] = []
        for cand in candidates:
            block_id = cand.meta.block_id
            if not runs or runs[-1][0] != cand.stream_id or block_id <= runs[-1][1][-1]:
                runs.append((cand.stream_id, []))
            runs[-1][1].append(block_id)
        parts: list[torch.Tensor] = []
        for stream_id, ids in runs:
            state = by_id[stream_id]
            table = state.reps if column == "rep_keys" else state.sketches
            parts.append(table.gather(ids))
        if parts:
            return parts[0] if len(parts) == 1 else torch.cat(parts)
        return torch.empty((0, *self.store.row_shape(column)), dtype=self.store.dtype)

    def rep_keys(self, candidates: Sequence[Candidate]) -> torch.Tensor:
        """Representative keys ``(n, layers, kv_heads * head_dim)`` of ``candidates`` (store
        dtype, in their order): newest from RAM, older from the index."""
        return self._rows("rep_keys", candidates)

    def sketches(self, candidates: Sequence[Candidate]) -> torch.Tensor:
        """Embedding sketches ``(n, vectors, hidden)`` of ``candidates`` (store dtype)."""
        return self._rows("sketch", candidates)

    @property
    def index_reads(self) -> int:
        """Retrieval rows read from the index so far (all streams, both columns)."""
        return sum(s.reps.index_reads + s.sketches.index_reads for s in self.streams.values())

    # ----------------------------------------------------------------------------- eviction

    def _protected(self, state: StreamState) -> int:
        """How many of the newest blocks eviction must leave (the recent ones answers use)."""
        return max(1, self.options.recent_blocks)

    def drop(self, state: StreamState, doomed: list[BlockMeta]) -> None:
        """Delete ``doomed`` blocks of ``state`` from disk, RAM and the retrieval rows."""
        if not doomed:
            return
        ids = {m.block_id for m in doomed}
        self.store.delete(state.stream_id, doomed)
        if self.frames is not None:
            self.frames.delete(state.name, ids)
        for meta in doomed:
            self.ram.discard_block(state.stream_id, meta.block_id, self.layers)
        state.reps.discard(ids)
        state.sketches.discard(ids)
        state.blocks = [m for m in state.blocks if m.block_id not in ids]

    def evict(self) -> None:
        """Evict past the retention horizon (every stream, so that a camera gone offline ages
        too) and down to the disk budget (oldest first, whole segment files)."""
        newest = max((s.blocks[-1].wall_end for s in self.streams.values() if s.blocks), default=0)
        cutoff = newest - self.options.retention_s
        for owner in self.streams.values():
            evictable = owner.blocks[: max(0, len(owner.blocks) - self._protected(owner))]
            stale = []
            for meta in evictable:
                if meta.wall_end >= cutoff:
                    break
                stale.append(meta)
            if stale:
                self.drop(owner, stale)
                log.info(
                    "memory: %d block(s) of %r passed the retention horizon", len(stale), owner.name
                )
        budget = self.options.disk_budget_bytes
        while self.segment_bytes() > budget:
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
            self.drop(owner, segment)

    def _oldest_evictable(self) -> tuple[StreamState, BlockMeta] | None:
        """The oldest block whose eviction frees its segment file: not one of the recent ones,
        and not in the segment its stream is appending to (whose bytes stay until it rolls
        over)."""
        best: tuple[StreamState, BlockMeta] | None = None
        for state in self.streams.values():
            if len(state.blocks) <= self._protected(state):
                continue
            meta = state.blocks[0]
            if meta.segment == self.store.active_segment(state.stream_id):
                continue
            if best is None or meta.wall_start < best[1].wall_start:
                best = (state, meta)
        return best

    def segment_bytes(self) -> int:
        """Bytes the disk budget covers: the block files and the blocks' evidence frames."""
        return sum(self.stream_disk_bytes(s) for s in self.streams.values())

    def stream_disk_bytes(self, state: StreamState) -> int:
        """``state``'s block files and evidence frames."""
        frames = 0 if self.frames is None else self.frames.stream_bytes(state.name)
        return self.store.disk_bytes(state.stream_id) + frames

    def drop_corrupt(self, block: BlockMeta | None) -> None:
        """Drop ``block``, whose stored bytes failed their checksum; without one (a segment file
        that could not be opened), every block that fails a read."""
        if block is not None:
            for state in self.streams.values():
                if state.name == block.stream:
                    self.drop(state, [m for m in state.blocks if m.block_id == block.block_id])
            return
        for state in self.streams.values():
            bad = []
            for meta in state.blocks:
                if meta.tokens == 0:
                    continue
                try:
                    self.store.read_layers(meta, range(self.layers))
                except CorruptBlockError:
                    bad.append(meta)
            self.drop(state, bad)

    # ---------------------------------------------------------------------------------- sizes

    def index_bytes(self, state: StreamState) -> int:
        """RAM of ``state``'s retrieval rows."""
        return state.reps.nbytes + state.sketches.nbytes
