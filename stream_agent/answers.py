"""The records of an answer, one set from the memory to the wire.

The memory yields them, the worker passes them on, the engine delivers them to the event loop
(adding only what it alone knows: the time the question waited, by ``dataclasses.replace``) and
the server turns the final one into the protocol's ``answer`` message. They are small frozen
dataclasses without callables or locks, so that they pickle: the engine may move to another
process, and these are what would cross. This module imports neither torch nor another part of
the project, so that every part can import it.

An answer is zero or more :class:`AnswerDelta`, then exactly one terminal record:
:class:`AnswerFinal` (also for a cancelled answer) or :class:`AnswerFailed`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal, TypeAlias

FinishReason: TypeAlias = Literal["stop", "length", "cancelled"]
FailureCode: TypeAlias = Literal["internal", "busy", "bad_request", "unknown_camera"]


@dataclass(frozen=True, slots=True)
class AnswerDelta:
    """The next piece of the answer's text (usually one decoded token)."""

    text: str


@dataclass(frozen=True, slots=True)
class Moment:
    """A stretch of one camera's video an answer was built from.

    ``start_pts``/``end_pts`` are stream seconds, ``start_wall``/``end_wall`` Unix seconds (of
    the stretch's first and last frame). ``score`` is the share of the LLM's layers that
    retrieved it (1.0 for the recent blocks, which every layer sees); ``relevance`` the mean,
    over those layers, of the retrieval score that picked it (None where no retrieval picked
    it: a recent block, or a worker without retrieval); ``recent`` says it was one of the
    camera's newest blocks, seen by every layer; ``seq`` is the sequence number of its first
    frame (None where unknown).
    """

    camera: str
    start_pts: float
    end_pts: float
    start_wall: float
    end_wall: float
    score: float
    relevance: float | None = None
    recent: bool = False
    seq: int | None = None


def best_first(moments: Iterable[Moment]) -> tuple[Moment, ...]:
    """``moments`` in the order an answer cites them, best first: by the share of layers that
    used the moment, then by retrieval relevance (missing or not finite counts as 0), then
    newest first."""

    def rank(m: Moment) -> tuple[float, float, float]:
        relevance = m.relevance if m.relevance is not None and math.isfinite(m.relevance) else 0.0
        return (m.score, relevance, m.end_wall)

    return tuple(sorted(moments, key=rank, reverse=True))


@dataclass(frozen=True, slots=True)
class AnswerTimings:
    """The figures of one answer, each computed once, where it is known. Seconds throughout.

    The worker measures from when it began the answer: ``ttft_s`` to its first text (None
    without text), ``tokens_per_s`` the decoding rate after the first token (None with fewer
    than two), ``total_s`` the whole answer. The engine then adds ``queue_s``, the time from the
    question's receipt until the worker began it (waiting behind other work, and whatever the
    worker did before its clock started), to ``ttft_s`` and ``total_s``, so that what it
    delivers counts from receipt.

    The memory's figures (None from a worker that has no such memory): ``retrieval_s`` the
    question's layer pass (retrieval, block loading, prefill); ``context_tokens`` the largest
    number of cached tokens a layer saw before the question; ``blocks_loaded`` the distinct
    blocks any layer used; ``disk_reads`` block layers read from disk (RAM-tier misses);
    ``index_reads`` retrieval rows (representative keys, sketches) of older blocks read from
    the index rather than RAM.
    """

    ttft_s: float | None
    tokens_per_s: float | None
    total_s: float
    queue_s: float = 0.0
    retrieval_s: float | None = None
    context_tokens: int | None = None
    blocks_loaded: int | None = None
    disk_reads: int | None = None
    index_reads: int | None = None

    def after_wait(self, queue_s: float) -> AnswerTimings:
        """These figures counted from receipt: ``queue_s`` added to ``ttft_s`` and ``total_s``."""
        wait = max(0.0, queue_s)
        return replace(
            self,
            ttft_s=None if self.ttft_s is None else self.ttft_s + wait,
            total_s=self.total_s + wait,
            queue_s=self.queue_s + wait,
        )


@dataclass(frozen=True, slots=True)
class AnswerFinal:
    """The end of an answer: the whole text, the moments it was built from (best first, see
    :func:`best_first`), the number of generated tokens, why it ended, and its timings.

    ``token_ids`` are the generated ids where the worker has them (the memory does; empty
    otherwise). A cancelled answer's ``text`` is what was generated until then.
    """

    text: str
    evidence: tuple[Moment, ...]
    tokens: int
    finish_reason: FinishReason
    timings: AnswerTimings
    token_ids: tuple[int, ...] = ()
    notes: tuple[str, ...] = ()
    """What the answer could not do as asked, in words (no video in the time range:
    ``no_moments``; fewer blocks than ``top_k`` fitted beside a long question)."""

    def __post_init__(self) -> None:
        if self.token_ids and len(self.token_ids) != self.tokens:
            raise ValueError(f"{len(self.token_ids)} token ids for {self.tokens} tokens")


@dataclass(frozen=True, slots=True)
class AnswerFailed:
    """The answer failed; ``code`` is a protocol error code, ``message`` a sentence."""

    code: FailureCode
    message: str


#: What a worker (and the memory) yields: deltas, then one final.
AnswerEvent: TypeAlias = AnswerDelta | AnswerFinal
#: What the engine delivers to the event loop: deltas, then one final or failure.
StreamEvent: TypeAlias = AnswerDelta | AnswerFinal | AnswerFailed
