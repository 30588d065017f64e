"""The interface every retrieval method implements: which stored blocks each layer sees.

An answer builds one :class:`Retriever` per question (after the question's scope, its
candidate blocks, and its ``top_k`` are known) from a :class:`RetrievalRequest`. During the
question's layer-by-layer prefill, :meth:`Retriever.select` is called once per layer with that
layer's grouped mean question query and returns the candidates that layer retrieves, with the
score that picked each (kept as the evidence's relevance). A retriever reads the per-block rows
it needs (representative keys, embedding sketches) itself, through the request's
:class:`RowSource`, so nothing outside it knows which rows a method uses; a method whose
:attr:`Retriever.uses_sketches` is set has the memory keep recent sketches in RAM for it.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from stream_agent.memory.records import Candidate


class RowSource(Protocol):
    """Per-block retrieval rows of candidates, in the candidates' order (store dtype)."""

    def rep_keys(self, candidates: Sequence[Candidate]) -> torch.Tensor:
        """Mean pre-RoPE keys ``(n, layers, kv_heads * head_dim)``."""
        ...

    def sketches(self, candidates: Sequence[Candidate]) -> torch.Tensor:
        """Embedding sketches ``(n, vectors, hidden)`` (unit rows)."""
        ...


@dataclass(frozen=True, slots=True, eq=False)
class RetrievalRequest:
    """One question's retrieval: its ``candidates`` (the blocks in scope, not the recent ones),
    the input embeddings ``(n, hidden)`` of the question's own rows, how many blocks each layer
    takes (``top_k``, already fitted to the model's positions) and where rows come from."""

    candidates: tuple[Candidate, ...]
    question_embeds: torch.Tensor
    top_k: int
    rows: RowSource


@dataclass(frozen=True, slots=True)
class Picks:
    """Indices into the request's candidates, best first, with the score that picked each."""

    indices: list[int]
    scores: list[float]


class Retriever(abc.ABC):
    """One question's retrieval (see the module docstring)."""

    name: ClassVar[str]
    #: Whether the method scores embedding sketches (the memory then keeps recent ones in RAM).
    uses_sketches: ClassVar[bool] = False

    def __init__(self, request: RetrievalRequest) -> None:
        self.request = request
        self.count = len(request.candidates)
        self.top_k = request.top_k

    def select(self, layer: int, query: torch.Tensor) -> Picks:
        """The candidates layer ``layer`` retrieves (at most ``top_k``), given its mean
        question query folded onto the KV heads (float32 ``(kv_heads * head_dim,)``, see
        :meth:`~stream_agent.memory.runner.LayerRunner.grouped_query`)."""
        if self.count == 0 or self.top_k == 0:
            return Picks([], [])
        return self.pick(layer, query)

    @abc.abstractmethod
    def pick(self, layer: int, query: torch.Tensor) -> Picks:
        """:meth:`select` when there is something to pick (candidates and ``top_k > 0``)."""
