"""Answering: per-layer retrieval, time ranges, recent blocks, streams, evidence, cancelling."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import torch

from stream_agent.answers import best_first
from stream_agent.memory import (
    AnswerDelta,
    AnswerFinal,
    FrameStamp,
    Memory,
    QuestionError,
    TimeRange,
    UnknownStreamError,
)
from stream_agent.models.base import VideoLLM
from stream_agent.models.records import DecodeOptions, VisualTokens

from .conftest import WALL0, feed, random_keep, stamp

QUESTION = "What happens at the door?"


def _final(memory: Memory, **kwargs: object) -> AnswerFinal:
    events = list(memory.answer(QUESTION, options=DecodeOptions(max_new_tokens=5), **kwargs))  # type: ignore[arg-type]
    assert all(isinstance(e, AnswerDelta) for e in events[:-1])
    final = events[-1]
    assert isinstance(final, AnswerFinal)
    assert final.text == "".join(e.text for e in events[:-1] if isinstance(e, AnswerDelta))
    return final


def test_layer_zero_retrieves_by_dot_product(
    llava: VideoLLM, frame_tokens: list[VisualTokens], make_memory: Callable[..., Memory]
) -> None:
    """At layer 0 the question's query and the blocks' mean keys depend on nothing retrieved,
    so the top-k can be computed from the model's own modules directly."""
    memory = make_memory(llava, window_tokens=32, top_k=3, recent_blocks=0, store_dtype="float32")
    feed(memory, llava, frame_tokens)
    _, prepared = memory.prepare(QUESTION)
    layer = llava.decoder.layers[0]
    attn = layer.self_attn
    heads, kv_heads = llava.lm_spec.num_heads, llava.lm_spec.num_kv_heads
    dim = llava.lm_spec.head_dim
    with torch.no_grad():
        means = []
        for tokens in frame_tokens:
            keys = attn.k_proj(layer.input_layernorm(tokens.embeds[None]))[0]
            means.append(
                keys.view(-1, kv_heads, dim).mean(0).repeat_interleave(heads // kv_heads, 0)
            )
        # the question's own tokens: where its suffix differs from probe questions' suffixes
        ids = list(llava.build_prompt(QUESTION).suffix_ids)
        start, end = len(ids), 0
        for text in ("0", "1"):
            probe = list(llava.build_prompt(text).suffix_ids)
            start = min(start, next(i for i, (a, b) in enumerate(zip(ids, probe)) if a != b))  # noqa: B905
            end = max(
                end, len(ids) - next(i for i in range(len(ids)) if ids[-1 - i] != probe[-1 - i])
            )
        # the end-of-video embedding comes first in the suffix chunk but is no question row
        embeds = llava.embed_text(ids[start:end])
        query = attn.q_proj(layer.input_layernorm(embeds[None]))[0].view(-1, heads, dim).mean(0)
        scores = torch.stack([(query * m).sum() for m in means])
    expected = sorted(torch.topk(scores, 3).indices.tolist())
    assert [c.meta.seq for c in prepared.selections[0]] == expected
    # each layer picks its own blocks, always three
    assert all(len(layer_blocks) == 3 for layer_blocks in prepared.selections)


def test_recent_blocks_are_the_newest_within_the_time_range(
    llava: VideoLLM, frame_tokens: list[VisualTokens], make_memory: Callable[..., Memory]
) -> None:
    memory = make_memory(llava, window_tokens=32, top_k=2, recent_blocks=2)
    feed(memory, llava, frame_tokens)
    final = _final(memory, time_range=TimeRange(since=WALL0 + 2, until=WALL0 + 4))
    seqs = [e.seq for e in final.evidence]
    assert final.evidence == best_first(final.evidence)  # cited best first
    assert {3, 4} <= set(seqs)
    assert set(seqs) <= {2, 3, 4}
    assert final.notes == ()
    for e in final.evidence:
        assert e.recent == (e.seq in (3, 4))
        assert 0 < e.score <= 1
        assert (e.relevance is None) == e.recent
    only_recent = _final(memory, top_k=0)
    assert [e.seq for e in only_recent.evidence] == [9, 8]  # equal scores: newest first


def test_question_leaves_memory_unchanged_and_encoding_continues(
    llava: VideoLLM, frame_tokens: list[VisualTokens], make_memory: Callable[..., Memory]
) -> None:
    memory = make_memory(llava, window_tokens=32, top_k=2)
    feed(memory, llava, frame_tokens[:5])
    before = memory.status()
    first = _final(memory)
    assert memory.status() == before
    assert _final(memory).token_ids == first.token_ids
    feed(memory, llava, frame_tokens[5:], first=5)
    assert memory.status()[0].blocks == len(frame_tokens)


def test_pruned_and_empty_blocks(
    llava: VideoLLM, frame_tokens: list[VisualTokens], make_memory: Callable[..., Memory]
) -> None:
    """Blocks of variable size (down to zero tokens) keep their span; empty ones are never
    retrieved."""
    memory = make_memory(llava, window_tokens=40, top_k=4, recent_blocks=1)
    n = len(frame_tokens[0])
    sizes = [5, 0, 16, 1, 9, 0, 12, 3]
    for i, count in enumerate(sizes):
        keep = random_keep(count, n, seed=i)
        memory.append_step("cam", frame_tokens[i], stamp(i), keep=keep)
    blocks = memory._streams["cam"].blocks
    assert [m.tokens for m in blocks] == sizes
    assert all(m.span == n for m in blocks)
    final = _final(memory)
    assert all(e.seq not in (1, 5) for e in final.evidence)
    newest = max(final.evidence, key=lambda e: e.start_wall)
    assert newest.seq == 7 and newest.recent


def test_streams_are_separate_and_all_streams_mix(
    llava: VideoLLM, frame_tokens: list[VisualTokens], make_memory: Callable[..., Memory]
) -> None:
    memory = make_memory(llava, window_tokens=32, top_k=3, recent_blocks=1)
    for i in range(4):
        memory.append_step("front", frame_tokens[i], stamp(2 * i))
        memory.append_step("back", frame_tokens[4 + i], stamp(2 * i + 1))
    assert memory.streams == ("front", "back")
    assert {e.camera for e in _final(memory, stream="front").evidence} == {"front"}
    both = _final(memory, stream=None, top_k=10)
    assert {e.camera for e in both.evidence} == {"front", "back"}
    # the context mixes the streams in wall-time order
    _, prepared = memory.prepare(QUESTION, stream=None, top_k=10)
    for chosen in prepared.selections:
        walls = [c.meta.wall_start for c in chosen]
        assert walls == sorted(walls) and {c.meta.stream for c in chosen} == {"front", "back"}
    with pytest.raises(UnknownStreamError, match="garden"):
        _final(memory, stream="garden")


def test_cancel_and_bad_questions(
    llava: VideoLLM, frame_tokens: list[VisualTokens], make_memory: Callable[..., Memory]
) -> None:
    memory = make_memory(llava)
    feed(memory, llava, frame_tokens[:3])
    cancel = threading.Event()
    events = memory.answer(
        QUESTION, options=DecodeOptions(max_new_tokens=20, stop_ids=()), cancel=cancel
    )
    cancel.set()
    final = list(events)[-1]
    assert isinstance(final, AnswerFinal)
    assert final.finish_reason == "cancelled"
    assert len(final.token_ids) == 1
    with pytest.raises(QuestionError):
        list(memory.answer("   "))
    with pytest.raises(QuestionError):
        TimeRange(since=10.0, until=5.0)


def test_status_reports_sizes(
    llava: VideoLLM, frame_tokens: list[VisualTokens], make_memory: Callable[..., Memory]
) -> None:
    memory = make_memory(llava, window_tokens=32)
    feed(memory, llava, frame_tokens[:3])
    memory.append_step("cam", frame_tokens[3], FrameStamp(3, 3.0, WALL0 + 3, 3.5, WALL0 + 3.5))
    (status,) = memory.status()
    assert status.stream == "cam" and status.blocks == 4 and status.frames_encoded == 4
    assert status.tokens == 4 * len(frame_tokens[0])
    assert status.window_tokens == 32
    assert status.last_pts == 3.5 and status.last_wall == WALL0 + 3.5
    assert status.oldest_wall == WALL0
    assert status.disk_bytes > 0 and status.ram_bytes > 0
    assert memory.ram_bytes >= status.ram_bytes


def test_top_k_is_lowered_when_the_blocks_would_not_fit_the_positions(
    llava: VideoLLM,
    frame_tokens: list[VisualTokens],
    make_memory: Callable[..., Memory],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """More blocks asked for than the model has positions: fewer blocks, not a failure."""
    n = len(frame_tokens[0])
    limit = llava.lm_spec.max_positions
    count = limit // n + 20  # every block of the stream would need more positions than exist
    memory = make_memory(llava, window_tokens=8 * n, top_k=count, recent_blocks=2)
    for i in range(count):
        memory.append_step("cam", frame_tokens[i % len(frame_tokens)], stamp(i))
    with caplog.at_level("WARNING", logger="stream_agent.memory.memory"):
        final = _final(memory)
    assert "top_k lowered" in caplog.text
    assert 0 < len(final.evidence) < count
    assert final.timings.context_tokens <= limit
