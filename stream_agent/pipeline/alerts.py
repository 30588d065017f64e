"""The alerts' model side over the engine: :class:`EngineAlerts` implements the alerts service's
:class:`~stream_agent.alerts.service.AlertEngine` Protocol.

The alerts service calls ``check`` and ``describe`` on its own thread (blocking calls); each
submits one item to the engine's check queue (behind people's questions, ahead of frames) and
waits for it with a timeout. A rule batch of one camera becomes ONE engine check, which the
real worker scores in one batched forward (:meth:`stream_agent.memory.Memory.check`). Errors
reach the service as exceptions (it counts them per rule); a timed-out wait withdraws the item
if it has not started and raises :class:`CheckTimeout`.

Build it in the daemon with the running engine: ``EngineAlerts(engine)``.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Sequence
from typing import TypeVar

from stream_agent.alerts.service import CheckAnswer, EventRecordLike, RuleQuestion
from stream_agent.engine import Engine
from stream_agent.engine.checks import DescribeRequest, RuleCondition
from stream_agent.engine.errors import EngineError

#: Seconds a rule check may wait and run (a batched forward takes well under one on a GPU).
CHECK_TIMEOUT_S = 60.0
#: Seconds a description may take (up to ``DESCRIBE_MAX_TOKENS`` decoded tokens).
DESCRIBE_TIMEOUT_S = 120.0


T = TypeVar("T")


class CheckTimeout(EngineError):
    """A rule check or description did not finish in time (the engine is busy or stuck)."""

    code = "busy"


class EngineAlerts:
    """:class:`~stream_agent.alerts.service.AlertEngine` over an :class:`Engine`.

    ``engine``: the daemon's engine (started; its worker implements ``check``/``describe``).
    ``check_timeout_s`` / ``describe_timeout_s``: how long a call waits for the engine.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        check_timeout_s: float = CHECK_TIMEOUT_S,
        describe_timeout_s: float = DESCRIBE_TIMEOUT_S,
    ) -> None:
        self._engine = engine
        self._check_timeout_s = check_timeout_s
        self._describe_timeout_s = describe_timeout_s

    def check(self, camera: str, questions: Sequence[RuleQuestion]) -> Sequence[CheckAnswer]:
        """Score ``questions`` over ``camera``'s newest memory: one :class:`CheckAnswer` per
        question, in order (score in [0, 1]; moments as ``(start_wall, end_wall)``)."""
        if not questions:
            return []
        conditions = [RuleCondition(q.condition, q.since) for q in questions]
        future = self._engine.check_rules(camera, conditions)
        scores = _wait(future, self._check_timeout_s, f"rule check of camera {camera!r}")
        return [
            CheckAnswer(
                score=min(1.0, max(0.0, float(s.score))),
                moments=tuple((m.start_wall, m.end_wall) for m in s.moments),
            )
            for s in scores
        ]

    def describe(self, camera: str, event: EventRecordLike, condition: str) -> str:
        """One sentence about ``event`` (the answer path over its moments' time range, or from
        its start when it has none)."""
        if event.moments:
            since = min(start for start, _ in event.moments)
            until = max(end for _, end in event.moments)
        else:
            since, until = event.start_time, None
        request = DescribeRequest(camera, condition, since=since, until=until)
        future = self._engine.describe(request)
        return _wait(future, self._describe_timeout_s, f"description of event {event.id}")


def _wait(future: concurrent.futures.Future[T], timeout_s: float, what: str) -> T:
    try:
        return future.result(timeout=timeout_s)
    except concurrent.futures.TimeoutError:
        future.cancel()  # withdrawn if still queued; a running check just finishes
        raise CheckTimeout(f"the {what} took more than {timeout_s:g} s") from None
