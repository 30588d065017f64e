"""Batched yes/no checks over one stream's newest blocks (the model side of alert rules).

An alert rule asks a yes/no question ("a person is at the door") of a camera every few
seconds; several rules of one camera are due together. :class:`CheckPass` answers N of them in
ONE layer-by-layer forward, without decoding:

- the shared context is what the answer path's recent blocks are (:meth:`Planner.scope` with
  no retrieval: ``top_k=0``): the attention sink, then the stream's ``recent_blocks`` newest
  blocks, read through the tiers from their stored K/V (nothing is re-encoded) and laid out
  exactly as :class:`~.answer.AnswerPass` lays them out;
- the N question suffixes (the family's end-of-video tokens, then the chat template around
  :func:`check_prompt` with the assistant turn opened, from ``model.build_prompt``) are packed
  one after the other into one sequence, each starting at the same position (where a single
  question's suffix would start); a block-diagonal mask lets each suffix attend to the shared
  context and to itself only (causally), so each suffix computes exactly what it would alone.
  The rows all suffixes of a group (same ``since``) begin with alike (end-of-video tokens, the
  template, "Answer yes or no.") are packed once and seen by each of the group's suffixes,
  which computes the same as each suffix having its own copy, with fewer rows;
- a condition's ``since`` (Unix s) hides, for that suffix only, the recent blocks that ended
  before it (masked, not removed: every block keeps its position, so a condition's result does
  not depend on the other conditions of its batch);
- each suffix's next-token logits at its last row give the score
  ``P(yes) / (P(yes) + P(no))`` of the softmax, i.e. ``sigmoid(logsumexp(yes) -
  logsumexp(no))`` over the logits of the "yes" and "no" tokens (:func:`answer_tokens`).

The stream's memory is not changed by a check; the suffixes' K/V are dropped with the pass.
Checks use no in-context compression (``MemoryOptions.compression`` applies to answers): their
context is a few recent blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from stream_agent.memory.answer import AnswerPass
from stream_agent.memory.cache import SlotCache
from stream_agent.memory.errors import QuestionError
from stream_agent.memory.planning import Planner
from stream_agent.memory.records import BlockMeta, Candidate
from stream_agent.memory.runner import LayerRunner
from stream_agent.memory.tiers import Tiers
from stream_agent.memory.window import SinkKV
from stream_agent.models.records import LMChunk

#: The spellings of the two answers whose token probabilities are summed: those the tokenizer
#: has as ONE token (real checkpoints: Qwen2's tokenizer has all of them). Where it has none for
#: an answer (the tiny test tokenizers), the first tokens of its spellings stand for it, less
#: any first token the other answer shares.
YES_SPELLINGS = (" yes", "yes", "Yes", " Yes")
NO_SPELLINGS = (" no", "no", "No", " No")


def check_prompt(condition: str) -> str:
    """The user text of a rule check: ``"Answer yes or no. <condition>?"``."""
    text = condition.strip().rstrip("?.! ")
    if not text:
        raise QuestionError("the condition is empty; say what to check")
    return f"Answer yes or no. {text}?"


def answer_tokens(tokenizer: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The token ids standing for "yes" and for "no" (see :data:`YES_SPELLINGS`), deduplicated;
    :class:`QuestionError` where the two cannot be told apart."""
    encoded = {
        word: [int(t) for t in tokenizer.encode(word, add_special_tokens=False)]
        for word in (*YES_SPELLINGS, *NO_SPELLINGS)
    }

    def unique(ids: list[int]) -> tuple[int, ...]:
        return tuple(dict.fromkeys(ids))

    def singles(spellings: Sequence[str]) -> tuple[int, ...]:
        return unique([encoded[w][0] for w in spellings if len(encoded[w]) == 1])

    def firsts(spellings: Sequence[str]) -> set[int]:
        return {encoded[w][0] for w in spellings if encoded[w]}

    yes, no = singles(YES_SPELLINGS), singles(NO_SPELLINGS)
    if not yes:
        shared = firsts(NO_SPELLINGS)
        yes = unique([encoded[w][0] for w in YES_SPELLINGS if encoded[w]])
        yes = tuple(t for t in yes if t not in shared)
    if not no:
        shared = firsts(YES_SPELLINGS) | set(yes)
        no = unique([encoded[w][0] for w in NO_SPELLINGS if encoded[w]])
        no = tuple(t for t in no if t not in shared)
    if not yes or not no or set(yes) & set(no):
        raise QuestionError(
            f"the tokenizer has no distinct tokens for yes and no (yes {yes}, no {no})"
        )
    return yes, no


@dataclass(frozen=True, slots=True)
class CheckCondition:
    """One yes/no condition; ``since`` (Unix s, None: all recent blocks) hides older blocks."""

    text: str
    since: float | None = None


@dataclass(frozen=True, slots=True, eq=False)
class CheckResult:
    """A condition's score (P(yes) renormalised over yes/no), the blocks its suffix saw (time
    order) and its next-token logits (float32 ``(vocab,)``, for tests and diagnostics)."""

    score: float
    blocks: tuple[BlockMeta, ...]
    logits: torch.Tensor

    @property
    def moments(self) -> tuple[tuple[float, float], ...]:
        """``(wall_start, wall_end)`` of each block used."""
        return tuple((m.wall_start, m.wall_end) for m in self.blocks)


class CheckPass:
    """N conditions over one stream's recent blocks in one forward (see the module docstring)."""

    def __init__(
        self,
        runner: LayerRunner,
        sink: SinkKV,
        planner: Planner,
        tiers: Tiers,
        *,
        system_prompt: str | None,
    ) -> None:
        self.runner = runner
        self.sink = sink
        self.planner = planner
        self.tiers = tiers
        self.system_prompt = system_prompt
        self.forwards = 0  # layer-by-layer passes run (one per check call)

    @torch.no_grad()
    def run(self, stream: str, conditions: Sequence[CheckCondition]) -> list[CheckResult]:
        if not conditions:
            return []
        r = self.runner
        model = r.model
        yes, no = answer_tokens(model.tokenizer)
        _, recent = self.planner.scope(stream, None)  # raises UnknownStreamError
        bounds = [c.since for c in conditions]
        # every recent block is laid out (as the answer path does), whatever the bounds: a
        # condition's result then does not depend on the others in its batch
        answer_pass = AnswerPass(
            r, self.sink, candidates=[], recent=recent, top_k=0, loader=self.tiers.load
        )
        chosen: list[Candidate] = answer_pass.recent  # time order
        start = answer_pass.start_position()
        suffixes: list[LMChunk] = []
        ids: list[tuple[int, ...]] = []
        for cond in conditions:
            layout = model.build_prompt(check_prompt(cond.text), system=self.system_prompt)
            if layout.prefix_ids != self.sink.ids:
                raise QuestionError("the chat prompt's prefix changed with the condition")
            chunk, offset = self.planner.suffix(layout, start)
            suffixes.append(chunk)
            ids.append((-1,) * offset + tuple(layout.suffix_ids))  # end-of-video rows: alike
        # which context slots (sink, then the blocks in `chosen` order) each condition may see
        sink_tokens = self.sink.tokens
        context = sink_tokens + sum(c.meta.tokens for c in chosen)
        sees = torch.ones(len(conditions), context, dtype=torch.bool)
        seen: list[tuple[BlockMeta, ...]] = []
        for i, since in enumerate(bounds):
            at = sink_tokens
            mine: list[BlockMeta] = []
            for cand in chosen:
                visible = since is None or cand.meta.wall_end >= since
                if visible:
                    mine.append(cand.meta)
                else:
                    sees[i, at : at + cand.meta.tokens] = False
                at += cand.meta.tokens
            seen.append(tuple(mine))
        # Rows, as segments: per group of conditions with the same `since`, the rows their
        # suffixes share (the end-of-video tokens, the chat template, "Answer yes or no.")
        # once, then each condition's own rest. A segment sees the context its group may see,
        # itself causally, and its group's shared segment: what each suffix sees alone.
        pieces: list[LMChunk] = []
        seg_rows: list[int] = []
        seg_cond: list[int] = []  # a condition of the segment's group (its context bounds)
        seg_parent: list[int] = []  # the shared segment it sees (-1: none)
        last_rows: list[int] = [0] * len(conditions)
        groups: dict[float | None, list[int]] = {}
        for i, since in enumerate(bounds):
            groups.setdefault(since, []).append(i)
        rows = 0
        for members in groups.values():
            shared, parent = 0, -1
            if len(members) > 1:
                shortest = min(len(ids[i]) for i in members)
                while shared < shortest - 1 and len({ids[i][shared] for i in members}) == 1:
                    shared += 1
            if shared:
                first = suffixes[members[0]]
                pieces.append(LMChunk(first.embeds[:shared], first.positions[..., :shared], 0))
                parent = len(seg_rows)
                seg_rows.append(shared)
                seg_cond.append(members[0])
                seg_parent.append(-1)
                rows += shared
            for i in members:
                own = suffixes[i]
                pieces.append(LMChunk(own.embeds[shared:], own.positions[..., shared:], 0))
                seg_rows.append(len(own) - shared)
                seg_cond.append(i)
                seg_parent.append(parent)
                rows += len(own) - shared
                last_rows[i] = rows - 1
        embeds = torch.cat([p.embeds for p in pieces], dim=0)
        positions = torch.cat([p.positions for p in pieces], dim=-1)
        owner = torch.repeat_interleave(torch.arange(len(seg_rows)), torch.tensor(seg_rows))
        parent_of = torch.tensor(seg_parent)[owner]
        causal = torch.tril(torch.ones(rows, rows, dtype=torch.bool))
        among = (owner[:, None] == owner[None, :]) & causal
        among |= parent_of[:, None] == owner[None, :]
        visible_rows = torch.cat([sees[torch.tensor(seg_cond)[owner]], among], dim=1)
        visible_rows = visible_rows.to(r.device)
        ends = torch.tensor(last_rows) + 1
        mask = r.additive_mask(visible_rows)
        embeddings = r.position_embeddings(positions)
        hidden = embeds[None].to(device=r.device, dtype=r.dtype)
        cache = SlotCache([])
        recent_keys = {c.key for c in chosen}  # a check sees only the recent blocks
        for layer in range(r.num_layers):
            slot_layer, _ = answer_pass._assemble(layer, chosen, start, rows, recent_keys)
            slot_layer.plan(slice(context, context + rows), context + rows)
            cache.add(slot_layer)
            hidden = r.run_layer(layer, hidden, embeddings, cache, mask)
            # the layer's buffer is not read again: free it now (peak memory: one layer's)
            slot_layer.keys = slot_layer.values = torch.empty(0, dtype=r.dtype)
            slot_layer.written = None
        self.forwards += 1
        last = hidden[:, (ends - 1).to(r.device)]
        logits: torch.Tensor = r.head(r.norm(last))[0].float()
        yes_ids = torch.tensor(yes, device=logits.device)
        no_ids = torch.tensor(no, device=logits.device)
        margin = torch.logsumexp(logits[:, yes_ids], -1) - torch.logsumexp(logits[:, no_ids], -1)
        scores = torch.sigmoid(margin).cpu()
        return [
            CheckResult(score=float(scores[i]), blocks=seen[i], logits=logits[i].cpu())
            for i in range(len(conditions))
        ]
