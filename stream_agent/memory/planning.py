"""Planning a question: what it may retrieve from, where its prompt goes, which rows ask.

:class:`Planner` holds no state of its own; it reads the memory's streams (through
:class:`~.tiers.Tiers`) and the model's chat prompt:

- :meth:`Planner.scope`: the candidate blocks of a question (one stream or all, within a time
  range) and the recent blocks every layer sees;
- :meth:`Planner.fit_top_k`: the question's suffix chunk, after lowering ``top_k`` where the
  blocks, the question and the answer would not fit the model's positions;
- :meth:`Planner.question_rows`: the suffix rows that are the question's own tokens (what the
  retrieval query averages).
"""

from __future__ import annotations

import logging
from dataclasses import replace

from stream_agent.answers import Moment
from stream_agent.memory.answer import AnswerPass
from stream_agent.memory.errors import QuestionError
from stream_agent.memory.options import MemoryOptions
from stream_agent.memory.records import BlockMeta, Candidate, TimeRange
from stream_agent.memory.tiers import Tiers
from stream_agent.models.base import LanguageModel, VideoLLM
from stream_agent.models.records import LMChunk, PromptLayout

log = logging.getLogger(__name__)

#: Probe questions: the suffix rows where a question's prompt differs from theirs are its own.
PROBES = ("0", "1")


def usable_in(meta: BlockMeta, since: float | None, until: float | None) -> bool:
    """Whether a question bounded to ``[since, until]`` (Unix seconds, None: open) may use the
    block ``meta``: when the block lies wholly inside the range, or when its span was extended
    by the change gate (longer than the step it encoded, ``layout.seconds_per_step``) and
    overlaps the range: the scene did not change over that span, so what the block holds is
    what the range saw. Its evidence is then cited clipped to the range (:func:`clip_moment`)."""
    if (since is None or meta.wall_start >= since) and (until is None or meta.wall_end <= until):
        return True
    extended = meta.wall_end - meta.wall_start > meta.layout.seconds_per_step + 1e-6
    overlaps = (since is None or meta.wall_end >= since) and (
        until is None or meta.wall_start <= until
    )
    return extended and overlaps


def clip_moment(moment: Moment, time_range: TimeRange) -> Moment:
    """``moment`` cut to ``time_range`` (its stream seconds shifted with its wall times)."""
    start = (
        moment.start_wall if time_range.since is None else max(moment.start_wall, time_range.since)
    )
    end = moment.end_wall if time_range.until is None else min(moment.end_wall, time_range.until)
    if start == moment.start_wall and end == moment.end_wall:
        return moment
    return replace(
        moment,
        start_wall=start,
        end_wall=end,
        start_pts=moment.start_pts + (start - moment.start_wall),
        end_pts=moment.end_pts + (end - moment.end_wall),
    )


class Planner:
    """Question planning over a memory's streams (see the module docstring)."""

    def __init__(
        self, model: LanguageModel, options: MemoryOptions, tiers: Tiers, *, max_positions: int
    ) -> None:
        self.model = model
        self.options = options
        self.tiers = tiers
        self.max_positions = max_positions

    def question_rows(self, layout: PromptLayout, offset: int) -> slice:
        """The rows of the question's own tokens in the suffix chunk (``query_rows="question"``):
        what differs between this question's suffix and probe questions' suffixes."""
        total = offset + len(layout.suffix_ids)
        if self.options.query_rows == "prompt":
            return slice(0, total)
        ids = layout.suffix_ids
        head, tail = len(ids), len(ids)
        for probe in PROBES:
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

    def suffix(self, layout: PromptLayout, start: int) -> tuple[LMChunk, int]:
        """The prompt after the blocks (the family's end-of-video tokens, then the question's
        suffix) from position ``start``, and the offset of the suffix ids in it."""
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

    def scope(
        self, stream: str | None, time_range: TimeRange | None
    ) -> tuple[list[Candidate], list[Candidate]]:
        """The candidate blocks and the recent blocks of ``stream`` (None: all streams) within
        ``time_range``. (The candidates' retrieval rows are the retriever's to read, see
        :mod:`~.retrieval`.)

        Only blocks that lie wholly inside the range are used (see :func:`usable_in` for the
        one exception, a still scene), the recent ones included: the recent blocks are the
        newest ``recent_blocks`` of each stream *within* the range, so that an answer bounded
        to the past neither sees nor cites anything after it."""
        states = (
            [self.tiers.state(stream)] if stream is not None else list(self.tiers.streams.values())
        )
        candidates: list[Candidate] = []
        recent: list[Candidate] = []
        since = time_range.since if time_range else None
        until = time_range.until if time_range else None
        for state in states:
            filled = [
                i for i, m in enumerate(state.blocks) if m.tokens > 0 and usable_in(m, since, until)
            ]
            recent_count = min(self.options.recent_blocks, len(filled))
            newest = set(filled[len(filled) - recent_count :]) if recent_count else set()
            for i in filled:
                meta = state.blocks[i]
                if i in newest:
                    recent.append(Candidate(state.stream_id, meta))
                else:
                    candidates.append(Candidate(state.stream_id, meta))
        return candidates, recent

    def fit_top_k(
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
            suffix, offset = self.suffix(layout, answer_pass.start_position())
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
