"""Rule checks and event descriptions: the alerts' kind of engine work.

A rule check scores yes/no conditions over one camera's newest memory (one batched forward in
the real worker, no decoding); a description is a short answer about an event. Both are queued
behind questions and ahead of frames (:mod:`stream_agent.engine.queue`), and come back as a
``concurrent.futures.Future`` (:meth:`Engine.check_rules`, :meth:`Engine.describe`). These
records cross the engine boundary like the others: small, frozen, picklable.
"""

from __future__ import annotations

from dataclasses import dataclass

from stream_agent.engine.records import Moment

#: New tokens a description may take (about one sentence).
DESCRIBE_MAX_TOKENS = 40


@dataclass(frozen=True, slots=True)
class RuleCondition:
    """One yes/no condition; ``since`` (Unix s; None: no bound) hides older moments."""

    text: str
    since: float | None = None


@dataclass(frozen=True, slots=True)
class RuleScore:
    """The model's P(yes) renormalised over yes/no, and the moments it looked at (time order)."""

    score: float
    moments: tuple[Moment, ...] = ()


@dataclass(frozen=True, slots=True)
class DescribeRequest:
    """A one-sentence description of what happened on ``camera`` between ``since`` and
    ``until`` (Unix s) regarding ``condition``."""

    camera: str
    condition: str
    since: float | None = None
    until: float | None = None
    max_new_tokens: int = DESCRIBE_MAX_TOKENS


def describe_prompt(condition: str) -> str:
    """The question a description asks: ``"In one sentence, describe what happened: <c>"``."""
    return f"In one sentence, describe what happened: {condition.strip()}"
