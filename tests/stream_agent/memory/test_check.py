"""Batched yes/no checks: the same logits as the answer path, one forward for N conditions."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_agent.memory import CheckCondition, Memory, QuestionError, check_prompt
from stream_agent.memory.check import answer_tokens
from stream_agent.memory.errors import UnknownStreamError
from stream_agent.models.base import VideoLLM
from stream_agent.models.records import VisualTokens

from .conftest import WALL0, feed, stamp

CONDITIONS = (
    "a person is at the door",
    "the light is on",
    "a red car is parked in the driveway next to the house",
    "it rains",
)


def first_token_logits(memory: Memory, condition: str, stream: str = "cam") -> torch.Tensor:
    _, prepared = memory.prepare(check_prompt(condition), stream=stream, top_k=0)
    return prepared.logits


def score_of(logits: torch.Tensor, model: VideoLLM) -> float:
    yes, no = answer_tokens(model.tokenizer)
    margin = torch.logsumexp(logits[list(yes)], 0) - torch.logsumexp(logits[list(no)], 0)
    return float(torch.sigmoid(margin))


def test_check_equals_the_answer_paths_first_token_logits(
    llava: VideoLLM,
    frame_tokens: list[VisualTokens],
    make_memory: Callable[..., Memory],
) -> None:
    memory = make_memory(llava, recent_blocks=3, window_tokens=64)
    feed(memory, llava, frame_tokens[:6])
    for condition in CONDITIONS:
        (result,) = memory.check("cam", [CheckCondition(condition)])
        expected = first_token_logits(memory, condition)
        assert torch.allclose(result.logits, expected, atol=1e-4, rtol=0)
        assert result.score == pytest.approx(score_of(expected, llava), abs=1e-4)
        assert 0.0 <= result.score <= 1.0
        assert [m.seq for m in result.blocks] == [3, 4, 5]  # the recent blocks only
        assert result.moments == tuple((WALL0 + i, WALL0 + i) for i in (3, 4, 5))


def test_a_batch_scores_like_single_checks_in_one_forward(
    llava: VideoLLM,
    frame_tokens: list[VisualTokens],
    make_memory: Callable[..., Memory],
) -> None:
    memory = make_memory(llava, recent_blocks=4)
    feed(memory, llava, frame_tokens[:5])
    conditions = [CheckCondition(c) for c in CONDITIONS] * 3  # 12, of different lengths
    before = memory.checks.forwards
    batch = memory.check("cam", conditions)
    assert memory.checks.forwards == before + 1
    singles = [memory.check("cam", [c])[0] for c in conditions[: len(CONDITIONS)]]
    for i, result in enumerate(batch):
        single = singles[i % len(CONDITIONS)]
        assert result.score == pytest.approx(single.score, abs=1e-4)
        assert torch.allclose(result.logits, single.logits, atol=1e-4, rtol=0)


def test_since_hides_older_blocks_for_that_condition_only(
    llava: VideoLLM,
    frame_tokens: list[VisualTokens],
    make_memory: Callable[..., Memory],
) -> None:
    memory = make_memory(llava, recent_blocks=4)
    feed(memory, llava, frame_tokens[:5])  # recent: seq 1..4 at WALL0 + seq
    text = CONDITIONS[0]
    bounded, unbounded = memory.check(
        "cam", [CheckCondition(text, since=WALL0 + 3), CheckCondition(text)]
    )
    assert [m.seq for m in bounded.blocks] == [3, 4]
    assert [m.seq for m in unbounded.blocks] == [1, 2, 3, 4]
    assert unbounded.score == pytest.approx(memory.check("cam", [CheckCondition(text)])[0].score)
    assert not torch.allclose(bounded.logits, unbounded.logits, atol=1e-4)
    (alone,) = memory.check("cam", [CheckCondition(text, since=WALL0 + 3)])
    assert torch.allclose(alone.logits, bounded.logits, atol=1e-4, rtol=0)
    (nothing,) = memory.check("cam", [CheckCondition(text, since=WALL0 + 100)])
    assert nothing.blocks == () and 0.0 <= nothing.score <= 1.0


def test_bad_checks_are_refused(
    llava: VideoLLM,
    frame_tokens: list[VisualTokens],
    make_memory: Callable[..., Memory],
) -> None:
    memory = make_memory(llava)
    feed(memory, llava, frame_tokens[:2])
    with pytest.raises(QuestionError):
        memory.check("cam", [CheckCondition("  ?")])
    with pytest.raises(UnknownStreamError):
        memory.check("elsewhere", [CheckCondition("a person")])
    assert memory.check("cam", []) == []


def test_check_on_qwen2_vl_equals_the_answer_path(
    frames: list[np.ndarray], make_memory: Callable[..., Memory]
) -> None:
    """M-RoPE positions and two frames per step."""
    from stream_agent.models.testing import build_test_adapter

    model = build_test_adapter("qwen2_vl", seed=0)
    memory = make_memory(model, recent_blocks=2)
    for first in (0, 2, 4):
        for tokens in model.encode_frames(frames[first : first + 2]):
            memory.append_step("cam", tokens, stamp(first), seconds_per_step=2.0)
    results = memory.check("cam", [CheckCondition(c) for c in CONDITIONS[:2]])
    for condition, result in zip(CONDITIONS[:2], results, strict=True):
        expected = first_token_logits(memory, condition)
        assert torch.allclose(result.logits, expected, atol=1e-4, rtol=0)
        assert len(result.blocks) == 2


@pytest.fixture(scope="module")
def filled(
    llava: VideoLLM, frame_tokens: list[VisualTokens], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Memory]:
    from stream_agent.memory import MemoryOptions

    store = tmp_path_factory.mktemp("check-property")
    memory = Memory(llava, MemoryOptions(store_dir=store, fsync=False, recent_blocks=4))
    feed(memory, llava, frame_tokens[:5])
    yield memory
    memory.close()


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batch=st.lists(
        st.tuples(st.sampled_from(CONDITIONS), st.sampled_from([None, WALL0 + 2, WALL0 + 4])),
        min_size=1,
        max_size=5,
    )
)
def test_a_conditions_score_does_not_depend_on_its_batch(
    filled: Memory, batch: list[tuple[str, float | None]]
) -> None:
    """docs/alerts.md: a rule's score does not depend on the other rules of its batch."""
    conditions = [CheckCondition(text, since) for text, since in batch]
    together = filled.check("cam", conditions)
    for condition, result in zip(conditions, together, strict=True):
        (alone,) = filled.check("cam", [condition])
        assert torch.allclose(result.logits, alone.logits, atol=1e-4, rtol=0)
        assert result.blocks == alone.blocks
