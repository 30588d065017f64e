"""Rule checks through the engine: questions first, then checks, then frames; bounded, shed and
failed cleanly; the alerts adapter over it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Callable

import pytest

from stream_agent.alerts.service import RuleQuestion
from stream_agent.config import EngineConfig
from stream_agent.engine import Engine, EngineStopped, Question, question_received_now
from stream_agent.engine.checks import DescribeRequest, RuleCondition
from stream_agent.engine.errors import CheckDropped
from stream_agent.metrics import DaemonMetrics, Registry
from stream_agent.pipeline.alerts import CheckTimeout, EngineAlerts
from tests.stream_agent.engine.fake_worker import FakeWorker, make_frame
from tests.support.prometheus import sample

Make = Callable[..., tuple[Engine, FakeWorker]]


@pytest.fixture
def metrics() -> DaemonMetrics:
    return DaemonMetrics(Registry())


@pytest.fixture
async def make_engine(metrics: DaemonMetrics) -> AsyncIterator[Make]:
    engines: list[Engine] = []

    def make(
        worker: FakeWorker | None = None, check_capacity: int = 8
    ) -> tuple[Engine, FakeWorker]:
        worker = worker or FakeWorker()
        engine = Engine(
            worker,
            EngineConfig(frame_queue_per_camera=10),
            metrics=metrics,
            check_capacity=check_capacity,
        )
        engine.start()
        engines.append(engine)
        return engine, worker

    yield make
    for engine in engines:
        await engine.aclose("cancel", grace_s=5)


async def _busy_encoding(engine: Engine, worker: FakeWorker) -> None:
    """Hold the engine inside the encode of frame 0 of camera dock."""
    engine.submit_frame(make_frame("dock", 0))
    await asyncio.to_thread(worker.encode_started.wait, 5)


async def test_questions_go_before_checks_and_checks_before_frames(make_engine: Make) -> None:
    gate = threading.Event()
    engine, worker = make_engine(FakeWorker(encode_gate=gate))
    await _busy_encoding(engine, worker)
    for i in range(1, 3):
        engine.submit_frame(make_frame("dock", i))
    check = engine.check_rules("dock", [RuleCondition("a person"), RuleCondition("a cat")])
    describe = engine.describe(DescribeRequest("dock", "a person"))
    stream = engine.ask(Question("q", "What?", camera="dock", received_at=question_received_now()))
    gate.set()
    await stream.collect()
    scores = await asyncio.wrap_future(check)
    text = await asyncio.wrap_future(describe)
    await asyncio.to_thread(lambda: engine.flush().result(5))
    kinds = [kind for kind, _ in worker.log]
    # frame 0 was being encoded; the question overtook the check, the checks the frames
    assert kinds[:4] == ["encode", "answer", "check", "describe"]
    assert kinds[4:] == ["encode", "encode", "flush"]
    assert [s.score for s in scores] == [0.9, 0.1]
    assert [m.start_pts for m in scores[0].moments] == [0.0]  # what was encoded by then
    assert text == "Seen on dock: a person."


async def test_a_full_check_queue_sheds_the_oldest_and_counts_it(
    make_engine: Make, metrics: DaemonMetrics
) -> None:
    gate = threading.Event()
    engine, worker = make_engine(FakeWorker(encode_gate=gate), check_capacity=2)
    await _busy_encoding(engine, worker)
    futures = [engine.check_rules("dock", [RuleCondition(f"a person {i}")]) for i in range(3)]
    assert isinstance(futures[0].exception(timeout=1), CheckDropped)
    text = metrics.registry.render()
    assert sample(text, "stream_agent_engine_queue_depth", kind="checks") == 2
    assert sample(text, "stream_agent_engine_checks_dropped_total", reason="overflow") == 1
    gate.set()
    for future in futures[1:]:
        assert (await asyncio.wrap_future(future))[0].score == 0.9
    assert engine.checks_dropped == {"overflow": 1}


async def test_a_check_withdrawn_while_queued_never_reaches_the_worker(make_engine: Make) -> None:
    gate = threading.Event()
    engine, worker = make_engine(FakeWorker(encode_gate=gate))
    await _busy_encoding(engine, worker)
    withdrawn = engine.check_rules("dock", [RuleCondition("a person")])
    assert withdrawn.cancel()
    kept = engine.check_rules("dock", [RuleCondition("a person")])
    gate.set()
    await asyncio.wrap_future(kept)
    assert [k for k, _ in worker.log].count("check") == 1


async def test_a_worker_error_fails_that_check_only(make_engine: Make) -> None:
    engine, _ = make_engine()
    failing = engine.check_rules("nowhere", [RuleCondition("a person")])  # no frames there
    with pytest.raises(RuntimeError, match="no frames"):
        await asyncio.wrap_future(failing)
    engine.submit_frame(make_frame("dock", 0))
    await asyncio.to_thread(lambda: engine.flush().result(5))
    assert (await asyncio.wrap_future(engine.check_rules("dock", [RuleCondition("x")])))[0]


async def test_shutdown_fails_pending_checks_and_refuses_new_ones(
    make_engine: Make, metrics: DaemonMetrics
) -> None:
    gate = threading.Event()
    engine, worker = make_engine(FakeWorker(encode_gate=gate))
    await _busy_encoding(engine, worker)
    pending = [engine.check_rules("dock", [RuleCondition("a person")]) for _ in range(2)]
    stopping = asyncio.ensure_future(engine.aclose("cancel", grace_s=5))
    await asyncio.sleep(0.05)
    gate.set()
    assert await stopping
    for future in pending:
        assert isinstance(future.exception(timeout=1), EngineStopped)
    late = engine.check_rules("dock", [RuleCondition("a person")])
    assert isinstance(late.exception(timeout=0), EngineStopped)
    text = metrics.registry.render()
    assert sample(text, "stream_agent_engine_checks_dropped_total", reason="shutdown") == 3
    assert "check" not in [k for k, _ in worker.log]


async def test_engine_alerts_maps_checks_and_describes_and_times_out(make_engine: Make) -> None:
    gate = threading.Event()
    gate.set()
    engine, _ = make_engine(FakeWorker(check_gate=gate))
    engine.submit_frame(make_frame("dock", 0, wall=1000.0))
    await asyncio.to_thread(lambda: engine.flush().result(5))
    alerts = EngineAlerts(engine, check_timeout_s=0.2)
    questions = [RuleQuestion("door", "a person at the door", None), RuleQuestion("c", "a cat", 5)]
    answers = await asyncio.to_thread(alerts.check, "dock", questions)
    assert [a.score for a in answers] == [0.9, 0.1]
    assert answers[0].moments == ((1000.0, 1001.0),)
    assert answers[1].moments == ((1000.0, 1001.0),)
    assert await asyncio.to_thread(alerts.check, "dock", []) == []

    class Event:
        id = "e1"
        start_time = 1000.0
        moments = ((1000.0, 1001.0),)

    text = await asyncio.to_thread(alerts.describe, "dock", Event(), "a person at the door")
    assert text == "Seen on dock: a person at the door."
    gate.clear()  # the worker now hangs in its next check
    with pytest.raises(CheckTimeout):
        await asyncio.to_thread(alerts.check, "dock", questions)
    gate.set()


def test_a_queued_check_is_a_plain_future() -> None:
    engine = Engine(FakeWorker(), EngineConfig())
    future = engine.check_rules("dock", [RuleCondition("a person")])  # never started
    assert isinstance(future, concurrent.futures.Future)
    assert isinstance(future.exception(timeout=0), EngineStopped)
