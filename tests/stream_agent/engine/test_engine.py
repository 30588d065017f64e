"""The engine thread with a deterministic fake worker: priorities, shedding, cancel, failures."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace

import pytest

from stream_agent.config import EngineConfig
from stream_agent.engine import (
    AnswerEvent,
    AnswerFailed,
    AnswerFinal,
    Engine,
    EngineBusy,
    EngineStopped,
    Question,
    question_received_now,
)
from stream_agent.metrics import DaemonMetrics, Registry
from tests.stream_agent.engine.fake_worker import MODEL_NAME, FakeWorker, make_frame
from tests.support.prometheus import sample


def _question(name: str, text: str = "What happened?", **kw: object) -> Question:
    return Question(name, text, received_at=question_received_now(), **kw)  # type: ignore[arg-type]


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


@pytest.fixture
def metrics() -> DaemonMetrics:
    return DaemonMetrics(Registry())


@pytest.fixture
async def make_engine(
    metrics: DaemonMetrics,
) -> AsyncIterator[Callable[..., tuple[Engine, FakeWorker]]]:
    engines: list[Engine] = []

    def make(worker: FakeWorker | None = None, **config: object) -> tuple[Engine, FakeWorker]:
        worker = worker or FakeWorker()
        engine = Engine(worker, EngineConfig(**config), metrics=metrics)  # type: ignore[arg-type]
        engine.start()
        engines.append(engine)
        return engine, worker

    yield make
    for engine in engines:
        await engine.aclose("cancel", grace_s=5)


async def test_an_answer_streams_deltas_then_a_final_with_evidence_and_timings(
    make_engine: Callable[..., tuple[Engine, FakeWorker]], metrics: DaemonMetrics
) -> None:
    engine, _ = make_engine()
    for i in range(4):
        engine.submit_frame(make_frame("dock", i, wall=1000.0 + i))
    await _until(lambda: engine.snapshot().worker.camera("dock") is not None)
    await _until(lambda: engine.snapshot().queued_frames == 0)
    text, final = await engine.ask(_question("q1", camera="dock")).collect()
    assert isinstance(final, AnswerFinal)
    assert text == final.text == "Seen 3 moments. word0 word1 word2"
    assert final.finish_reason == "stop"
    assert final.tokens == 4
    assert [m.start_pts for m in final.evidence] == [3.0, 2.0, 1.0]
    assert [m.score for m in final.evidence] == pytest.approx([0.9, 0.8, 0.7])
    timings = final.timings
    assert timings.ttft_s is not None and timings.ttft_s >= 0
    assert timings.tokens_per_s is not None and timings.tokens_per_s > 0
    assert timings.total_s >= timings.ttft_s >= timings.queue_s >= 0
    status = engine.snapshot()
    assert status.worker.ready and status.worker.model == MODEL_NAME
    assert status.frames_encoded == {"dock": 4}
    assert metrics.answers.value(outcome="stop") == 1
    assert metrics.answer_ttft.count() == 1
    assert metrics.engine_frames_encoded.value(camera="dock") == 4


async def test_the_time_range_reaches_the_worker(
    make_engine: Callable[..., tuple[Engine, FakeWorker]],
) -> None:
    engine, _ = make_engine()
    for i in range(10):
        engine.submit_frame(make_frame("dock", i, wall=1000.0 + i))
        await _until(lambda: engine.snapshot().queued_frames == 0)
    _, final = await engine.ask(_question("q", since=1002.0, until=1004.0)).collect()
    assert isinstance(final, AnswerFinal)
    assert sorted(m.start_wall for m in final.evidence) == [1002.0, 1003.0, 1004.0]


async def test_questions_are_answered_before_queued_frames(
    make_engine: Callable[..., tuple[Engine, FakeWorker]],
) -> None:
    gate = threading.Event()
    engine, worker = make_engine(FakeWorker(encode_gate=gate), frame_queue_per_camera=10)
    engine.submit_frame(make_frame("dock", 0))
    await asyncio.to_thread(worker.encode_started.wait, 5)  # the engine is busy encoding frame 0
    for i in range(1, 4):
        engine.submit_frame(make_frame("dock", i))
    stream = engine.ask(_question("urgent"))
    gate.set()
    await stream.collect()
    await _until(lambda: engine.snapshot().queued_frames == 0)
    kinds = [kind for kind, _ in worker.log]
    # frame 0 was already being encoded; the question overtook the three queued frames
    assert kinds[:2] == ["encode", "answer"]
    assert kinds[2:] == ["encode"] * (len(kinds) - 2)


async def test_when_frames_back_up_the_newest_win_and_drops_are_counted_per_camera(
    make_engine: Callable[..., tuple[Engine, FakeWorker]], metrics: DaemonMetrics
) -> None:
    gate = threading.Event()
    engine, worker = make_engine(
        FakeWorker(encode_gate=gate), frame_queue_per_camera=2, max_batch_frames=10
    )
    engine.submit_frame(make_frame("dock", 0))
    await asyncio.to_thread(worker.encode_started.wait, 5)
    for i in range(1, 8):
        engine.submit_frame(make_frame("dock", i))
    engine.submit_frame(make_frame("door", 0))
    gate.set()
    await _until(lambda: engine.snapshot().queued_frames == 0)
    await _until(lambda: sum(engine.snapshot().frames_encoded.values()) == 4)
    assert [pts for pts, _ in worker.frames["dock"]] == [0.0, 6.0, 7.0]
    assert [pts for pts, _ in worker.frames["door"]] == [0.0]
    assert engine.snapshot().frames_dropped == {"dock": 5}
    assert metrics.engine_frames_dropped.value(camera="dock", reason="overflow") == 5
    assert engine.snapshot().frame_lag_s["dock"] >= 0


async def test_cancel_stops_an_answer_midway(
    make_engine: Callable[..., tuple[Engine, FakeWorker]], metrics: DaemonMetrics
) -> None:
    gate = threading.Event()  # never set: the worker waits before every token after the first
    engine, worker = make_engine(FakeWorker(token_gate=gate, answer_words=50))
    stream = engine.ask(_question("long"))
    await asyncio.to_thread(worker.first_token_sent.wait, 5)
    stream.cancel()
    text, final = await asyncio.wait_for(stream.collect(), 5)
    assert isinstance(final, AnswerFinal)
    assert final.finish_reason == "cancelled"
    assert text == final.text == "Seen 0 moments."
    assert final.evidence == ()
    assert metrics.answers.value(outcome="cancelled") == 1
    # the engine goes on: the next question is answered
    gate.set()
    _, after = await engine.ask(_question("next")).collect()
    assert isinstance(after, AnswerFinal) and after.finish_reason == "stop"


async def test_a_question_cancelled_while_queued_never_reaches_the_worker(
    make_engine: Callable[..., tuple[Engine, FakeWorker]],
) -> None:
    gate = threading.Event()
    engine, worker = make_engine(FakeWorker(token_gate=gate, answer_words=5))
    first = engine.ask(_question("first"))
    await asyncio.to_thread(worker.first_token_sent.wait, 5)
    second = engine.ask(_question("second"))
    second.cancel()
    gate.set()
    _, final = await second.collect()
    await first.collect()
    assert (
        isinstance(final, AnswerFinal) and final.finish_reason == "cancelled" and final.text == ""
    )
    assert ("answer", "second") not in worker.log


async def test_a_worker_exception_fails_that_question_only(
    make_engine: Callable[..., tuple[Engine, FakeWorker]], metrics: DaemonMetrics
) -> None:
    engine, _ = make_engine()
    _, failed = await engine.ask(_question("bad", "please explode")).collect()
    assert isinstance(failed, AnswerFailed)
    assert failed.code == "internal"
    assert "exploded as asked" in failed.message
    _, final = await engine.ask(_question("good")).collect()
    assert isinstance(final, AnswerFinal) and final.finish_reason == "stop"
    assert engine.running
    assert metrics.answers.value(outcome="failed") == 1


async def test_an_encode_exception_is_counted_and_the_engine_goes_on(
    make_engine: Callable[..., tuple[Engine, FakeWorker]], metrics: DaemonMetrics
) -> None:
    engine, worker = make_engine(FakeWorker(failing_cameras=frozenset({"broken"})))
    engine.submit_frame(make_frame("broken", 0))
    engine.submit_frame(make_frame("fine", 0))
    await _until(lambda: "fine" in worker.frames)
    await _until(lambda: metrics.engine_encode_errors.value(camera="broken") == 1)
    assert metrics.engine_frames_dropped.value(camera="broken", reason="error") == 1
    assert engine.running


async def test_a_worker_that_cannot_open_reports_why_and_fails_questions(
    make_engine: Callable[..., tuple[Engine, FakeWorker]], metrics: DaemonMetrics
) -> None:
    engine, _ = make_engine(FakeWorker(open_error=RuntimeError("no such model folder")))
    await _until(lambda: "could not be loaded" in engine.snapshot().worker.reason)
    assert not engine.snapshot().worker.ready
    _, failed = await engine.ask(_question("q")).collect()
    assert isinstance(failed, AnswerFailed)
    assert "no such model folder" in failed.message
    engine.submit_frame(make_frame("dock", 0))
    await _until(
        lambda: metrics.engine_frames_dropped.value(camera="dock", reason="not_ready") == 1
    )


async def test_a_full_question_queue_answers_busy(
    make_engine: Callable[..., tuple[Engine, FakeWorker]],
) -> None:
    gate = threading.Event()
    engine, worker = make_engine(FakeWorker(token_gate=gate), question_queue=1)
    running = engine.ask(_question("running"))
    await asyncio.to_thread(worker.first_token_sent.wait, 5)
    waiting = engine.ask(_question("waiting"))
    with pytest.raises(EngineBusy, match="ask again"):
        engine.ask(_question("one too many"))
    gate.set()
    for stream in (running, waiting):
        _, final = await stream.collect()
        assert isinstance(final, AnswerFinal) and final.finish_reason == "stop"


async def test_flush_reaches_the_worker(
    make_engine: Callable[..., tuple[Engine, FakeWorker]],
) -> None:
    engine, worker = make_engine()
    await asyncio.wrap_future(engine.flush())
    assert worker.flushed == 1


async def test_stop_finishes_answers_in_flight_then_flushes_and_closes(
    make_engine: Callable[..., tuple[Engine, FakeWorker]],
) -> None:
    gate = threading.Event()
    engine, worker = make_engine(FakeWorker(token_gate=gate))
    stream = engine.ask(_question("in flight"))
    await asyncio.to_thread(worker.first_token_sent.wait, 5)
    stopping = asyncio.create_task(engine.aclose("finish", grace_s=5))
    await _until(lambda: not engine.accepting)
    with pytest.raises(EngineStopped):
        engine.ask(_question("too late"))
    gate.set()
    _, final = await stream.collect()
    assert await stopping
    assert isinstance(final, AnswerFinal) and final.finish_reason == "stop"
    assert worker.flushed == 1 and worker.closed
    assert not engine.running
    assert not engine.submit_frame(make_frame("dock", 0))


async def test_stop_with_cancel_cancels_answers_in_flight(
    make_engine: Callable[..., tuple[Engine, FakeWorker]],
) -> None:
    engine, worker = make_engine(FakeWorker(token_gate=threading.Event(), answer_words=50))
    stream = engine.ask(_question("in flight"))
    await asyncio.to_thread(worker.first_token_sent.wait, 5)
    assert await engine.aclose("cancel", grace_s=5)
    _, final = await stream.collect()
    assert isinstance(final, AnswerFinal) and final.finish_reason == "cancelled"
    assert worker.flushed == 1 and worker.closed


async def test_engine_metrics_render_queue_depth_and_memory(
    make_engine: Callable[..., tuple[Engine, FakeWorker]], metrics: DaemonMetrics
) -> None:
    engine, _ = make_engine()
    engine.submit_frame(make_frame("dock", 0))
    await _until(lambda: engine.snapshot().worker.camera("dock") is not None)
    text = metrics.registry.render()
    assert sample(text, "stream_agent_engine_queue_depth", kind="frames") == 0
    assert sample(text, "stream_agent_memory_blocks", camera="dock") == 1
    assert sample(text, "stream_agent_pruner_kept_ratio", camera="dock") == 0.25
    assert sample(text, "stream_agent_model_ready") == 1


class _MemoryFiguresWorker(FakeWorker):
    """A fake whose finals carry a memory's figures, as the real worker's do."""

    def answer(self, question: Question, cancel: threading.Event) -> Iterator[AnswerEvent]:
        for event in super().answer(question, cancel):
            if isinstance(event, AnswerFinal):
                figures = replace(
                    event.timings,
                    retrieval_s=0.25,
                    context_tokens=96,
                    blocks_loaded=3,
                    disk_reads=2,
                )
                event = replace(event, timings=figures)
            yield event


async def test_the_workers_figures_are_delivered_and_counted_with_the_wait_added(
    make_engine: Callable[..., tuple[Engine, FakeWorker]], metrics: DaemonMetrics
) -> None:
    engine, _ = make_engine(_MemoryFiguresWorker())
    engine.submit_frame(make_frame("dock", 0, wall=1000.0))
    await _until(lambda: engine.snapshot().queued_frames == 0)
    # received five seconds ago: the engine adds that wait, and only that, to what it delivers
    question = Question("q", "What happened?", received_at=question_received_now() - 5.0)
    _, final = await engine.ask(question).collect()
    assert isinstance(final, AnswerFinal) and final.finish_reason == "stop"
    t = final.timings
    assert (t.retrieval_s, t.context_tokens, t.blocks_loaded, t.disk_reads) == (0.25, 96, 3, 2)
    assert t.ttft_s is not None and t.total_s >= t.ttft_s >= t.queue_s >= 5.0
    assert t.total_s - t.queue_s < 5.0  # the worker's own time is not counted as waiting
    assert metrics.answer_retrieval.count() == 1
    assert metrics.answer_blocks_loaded.value() == 3 and metrics.answer_disk_reads.value() == 2
    assert metrics.answer_ttft.count() == 1
