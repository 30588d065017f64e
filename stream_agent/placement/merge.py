"""One answer from several: the answer of the memory holding the most relevant moment, with the
evidence of every memory that answered (best first).

An all-cameras question on a Ray placement is asked of every engine (and, inside one engine, of
every camera's memory): each retrieves its own most relevant blocks and answers over them. Only
one model can attend to the KV blocks of its own memory, so the answers cannot be fused into one
generation; the one whose best retrieved moment scores highest is kept as the text, and the
moments of all are kept as evidence, so that the client sees every camera that had something.
This module is the one place that knows the answer records' names: a rename there is a one-line
change here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from stream_agent.answers import AnswerFinal, Moment


@dataclass(frozen=True, slots=True)
class Candidate:
    """One memory's answer: its text and how it ended."""

    source: str
    text: str
    evidence: tuple[Moment, ...]
    tokens: int
    notes: tuple[str, ...] = ()


def best_score(evidence: Sequence[Moment]) -> float:
    return max((m.score for m in evidence), default=float("-inf"))


def pick(candidates: Sequence[Candidate], *, max_evidence: int = 64) -> Candidate:
    """The candidate with the best-scoring moment (ties: the first), with all the evidence."""
    if not candidates:
        raise ValueError("no answer to pick from")
    lead = max(candidates, key=lambda c: best_score(c.evidence))

    def order(m: Moment) -> tuple[float, str, float]:
        return (-m.score, m.camera, m.start_pts)

    # every camera's best moment first (so that each camera with something is shown), then
    # the rest by score
    firsts = [min(c.evidence, key=order) for c in candidates if c.evidence]
    chosen = set(map(id, firsts))
    rest = [m for c in candidates for m in c.evidence if id(m) not in chosen]
    moments = sorted(firsts, key=order) + sorted(rest, key=order)
    notes = tuple(dict.fromkeys(n for c in candidates for n in c.notes))
    if len(candidates) > 1:
        others = ", ".join(c.source for c in candidates if c is not lead)
        notes += (f"answered from {lead.source}'s memory; evidence also from {others}",)
    return Candidate(lead.source, lead.text, tuple(moments[:max_evidence]), lead.tokens, notes)


def from_final(source: str, final: AnswerFinal) -> Candidate:
    return Candidate(source, final.text, final.evidence, final.tokens, final.notes)
