"""The memory's settings: one frozen record, validated when built, passed explicitly.

:meth:`MemoryOptions.from_config` maps the daemon's ``memory`` config section onto it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import torch

from stream_agent.memory.compression import CompressionSpec, parse_compression
from stream_agent.memory.errors import MemoryConfigError
from stream_agent.memory.retrieval import RETRIEVERS

#: Store dtypes by their config names.
STORE_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    # the 8-bit KV codec (stream_agent.memory.kv8): int8 with per-channel float16 scales on
    # disk; representative keys and sketches stay float16
    "int8": torch.int8,
}

QueryRows = Literal["question", "prompt"]
Retrieval = Literal["internal", "embedding", "hybrid"]


@dataclass(frozen=True, slots=True)
class MemoryOptions:
    """How the memory encodes, keeps and retrieves a stream's KV blocks.

    Encoding:

    - ``window_tokens``: the working window. Each new block attends to the attention sink (the
      prompt's prefix) plus the most recent blocks totalling at most ``window_tokens`` tokens
      with it (ReKV's ``n_local``, 15,000 in the paper); older blocks leave the window, which
      keeps the per-frame cost flat however long the stream runs.
    - ``position_limit``: encoding positions never exceed it (default: the model's
      ``max_positions``); when the window would, its keys are re-rotated back to just after the
      sink.
    - ``system_prompt``: the system message of the chat prompt whose prefix is the sink.

    Answering:

    - ``top_k``: blocks each layer retrieves by its question query (ReKV's ``topk``, 64),
      besides the ``recent_blocks`` newest blocks of the stream, which every answer sees.
    - ``query_rows``: which rows of the question prompt are averaged into the retrieval query:
      the question's own tokens (ReKV) or the whole prompt suffix.
    - ``retrieval``: ``"internal"`` is ReKV's: each layer scores the blocks with its own mean
      question query against their mean keys. ``"embedding"`` is ReKV's external retrieval with
      the LLM's input-embedding space as the shared space: the question's token embeddings score
      each block's embedding sketch (max-sim, see :mod:`~stream_agent.memory.sketch`), and every
      layer gets the same ``top_k`` blocks. ``"hybrid"``: every layer takes the embedding
      retrieval's best half of ``top_k`` (rounded up), then fills the rest with its own picks.
    - ``sketch_vectors``: embedding vectors kept per block for ``"embedding"`` retrieval.
    - ``compression``: the in-context compression applied to each layer's assembled context
      during the answer (:mod:`~stream_agent.memory.compression`): a method name (``"none"``,
      the default, leaves it whole; ``"dycoke"``, ``"holitom"``, ``"metok"``), a mapping
      ``{"method": name, **settings}`` or a list of them (combined); kept as the validated
      tuple of :class:`~.compression.CompressionSpec` (empty: none).
    - ``index_ram_blocks``: per stream, the newest blocks whose retrieval rows (representative
      keys; sketches too when ``retrieval`` uses them) stay in RAM; older blocks' rows are read
      from the SQLite index at question time, so RAM does not grow with the stream's length.

    Tiers (per :class:`~stream_agent.memory.memory.Memory`, shared by its streams):

    - ``ram_budget_bytes``: the LRU cache of stored blocks in RAM (0 disables it);
    - ``disk_budget_bytes``: all streams' block files together; the oldest blocks go first;
    - ``retention_s``: blocks whose wall time is older than this behind the newest block of any
      stream are evicted (a stream's ``recent_blocks`` newest stay);
    - ``store_dtype``: ``float16`` (default, half the bytes), ``bfloat16``, ``float32`` (bit
      exact for a float32 model) or ``int8`` (the 8-bit KV codec, :mod:`~.kv8`: about half of
      float16's bytes; per-channel scales, error at most half a scale per value);
    - ``segment_bytes``: block files roll over at this size; a file is deleted once all of its
      blocks are evicted;
    - ``fsync``: flush each block file and index commit to the device before returning, so that
      a power cut loses at most the block being written.
    """

    store_dir: Path
    window_tokens: int = 15_000
    top_k: int = 64
    recent_blocks: int = 4
    ram_budget_bytes: int = 2 * 1024**3
    disk_budget_bytes: int = 20 * 1024**3
    retention_s: float = 7 * 86400.0
    store_dtype: str = "float16"
    segment_bytes: int = 64 * 1024**2
    fsync: bool = True
    system_prompt: str | None = None
    position_limit: int | None = None
    query_rows: QueryRows = "question"
    retrieval: Retrieval = "internal"
    sketch_vectors: int = 8
    compression: Any = "none"
    index_ram_blocks: int = 512

    def __post_init__(self) -> None:
        object.__setattr__(self, "store_dir", Path(self.store_dir).expanduser())
        positive = {
            "window_tokens": self.window_tokens,
            "top_k": self.top_k,
            "segment_bytes": self.segment_bytes,
            "sketch_vectors": self.sketch_vectors,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise MemoryConfigError(f"memory.{name} must be a positive integer, got {value!r}")
        non_negative = {
            "recent_blocks": self.recent_blocks,
            "index_ram_blocks": self.index_ram_blocks,
            "ram_budget_bytes": self.ram_budget_bytes,
            "disk_budget_bytes": self.disk_budget_bytes,
        }
        for name, value in non_negative.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise MemoryConfigError(f"memory.{name} must be an integer >= 0, got {value!r}")
        if not (isinstance(self.retention_s, int | float) and self.retention_s > 0):
            raise MemoryConfigError(
                f"memory.retention_s must be a positive number of seconds, got {self.retention_s!r}"
            )
        if math.isnan(float(self.retention_s)):
            raise MemoryConfigError("memory.retention_s must be a number, not NaN")
        if self.store_dtype not in STORE_DTYPES:
            raise MemoryConfigError(
                f"memory.store_dtype {self.store_dtype!r} is not one of {', '.join(STORE_DTYPES)}"
            )
        if self.position_limit is not None and (
            not isinstance(self.position_limit, int) or self.position_limit < 2
        ):
            raise MemoryConfigError(
                f"memory.position_limit must be an integer >= 2 or unset, got "
                f"{self.position_limit!r}"
            )
        if self.retrieval not in RETRIEVERS:
            raise MemoryConfigError(
                "memory.retrieval must be 'internal', 'embedding' or 'hybrid', got "
                f"{self.retrieval!r}"
            )
        specs: tuple[CompressionSpec, ...] = parse_compression(self.compression)
        object.__setattr__(self, "compression", specs)
        if self.query_rows not in ("question", "prompt"):
            raise MemoryConfigError(
                f"memory.query_rows must be 'question' or 'prompt', got {self.query_rows!r}"
            )

    @property
    def torch_store_dtype(self) -> torch.dtype:
        return STORE_DTYPES[self.store_dtype]

    def with_changes(self, **changes: Any) -> MemoryOptions:
        """A copy with ``changes`` applied (validated again)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise MemoryConfigError(f"unknown memory options: {', '.join(unknown)}")
        return replace(self, **changes)

    @classmethod
    def from_config(cls, section: Any, **overrides: Any) -> MemoryOptions:
        """Options from the daemon config's ``memory`` section (``stream_agent.config``), which
        has ``window_tokens``, ``top_k``, ``ram_budget``, ``disk_budget``, ``store_dir``,
        ``retention_s`` and ``retrieval`` (and ``compression`` once the section has it);
        ``overrides`` set the rest (e.g. ``system_prompt``)."""
        values: dict[str, Any] = {
            "store_dir": Path(section.store_dir),
            "window_tokens": int(section.window_tokens),
            "top_k": int(section.top_k),
            "ram_budget_bytes": int(section.ram_budget),
            "disk_budget_bytes": int(section.disk_budget),
            "retention_s": float(section.retention_s),
            "retrieval": section.retrieval,
        }
        if hasattr(section, "compression"):
            values["compression"] = _plain_compression(section.compression)
        if hasattr(section, "store_dtype"):
            values["store_dtype"] = section.store_dtype
        values.update(overrides)
        return cls(**values)


def _plain_compression(value: Any) -> Any:
    """The config section's compression (names, pydantic models, tuples) as names and dicts of
    the settings given (the memory's defaults fill the rest)."""
    if isinstance(value, list | tuple):
        return [_plain_compression(v) for v in value]
    dump = getattr(value, "model_dump", None)
    if dump is not None:
        given = dump(exclude_unset=True)
        given["method"] = value.method
        return given
    return value
