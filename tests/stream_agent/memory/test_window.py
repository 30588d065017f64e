"""Sliding-window encoding against the library's own forward, and bounded positions."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

from stream_agent.memory import Memory
from stream_agent.memory.answer import Candidate
from stream_agent.models.base import VideoLLM
from stream_agent.models.records import LMChunk, VisualTokens

from .conftest import random_keep, stamp


def _stored(memory: Memory, seq: int) -> tuple[torch.Tensor, torch.Tensor, LMChunk]:
    """A stored block's keys/values (layers, heads, tokens, dim) and its positions as a chunk
    (embeddings left empty)."""
    state = memory._streams["cam"]
    meta = next(m for m in state.blocks if m.seq == seq)
    layers = [memory._load(Candidate(state.stream_id, meta), i) for i in range(2)]
    placed = LMChunk(torch.empty(meta.tokens, 0), meta.layout.positions, meta.layout.next_position)
    return torch.stack([k for k, _ in layers]), torch.stack([v for _, v in layers]), placed


def _library_encode(
    model: VideoLLM, memory: Memory, window: list[tuple[torch.Tensor, torch.Tensor]], chunk: LMChunk
) -> torch.Tensor:
    """The block's keys per layer when the library's forward prefills ``chunk`` over the sink
    and ``window`` (keys/values at their positions) in a plain DynamicCache."""
    cache = model.new_cache()
    for layer in range(2):
        keys = torch.cat([memory.sink.keys[layer], *[k[layer] for k, _ in window]], dim=1)
        values = torch.cat([memory.sink.values[layer], *[v[layer] for _, v in window]], dim=1)
        cache.update(keys[None], values[None], layer)
    before = cache.layers[0].keys.shape[2]
    model.prefill(cache, chunk)
    return torch.stack([cache.layers[i].keys[0, :, before:] for i in range(2)])


def test_window_blocks_attend_to_sink_and_recent_tokens_only(
    llava: VideoLLM, frame_tokens: list[VisualTokens], make_memory: Callable[..., Memory]
) -> None:
    """Variable-size blocks in a 30-token window (the ring wraps around): each block's keys
    equal the library's prefill of it over exactly the sink and the blocks still in the window."""
    memory = make_memory(llava, window_tokens=30, store_dtype="float32")
    sizes = [16, 10, 16, 7, 12, 16, 3, 14]
    n = len(frame_tokens[0])
    keeps = [random_keep(size, n, seed=10 + i) for i, size in enumerate(sizes)]
    for i in range(len(sizes)):
        memory.append_step("cam", frame_tokens[i], stamp(i), keep=keeps[i])
    for i in range(1, len(sizes)):
        window: list[int] = []
        total = sizes[i]
        for j in range(i - 1, -1, -1):
            if total + sizes[j] > 30:
                break
            window.insert(0, j)
            total += sizes[j]
        stored = [_stored(memory, j) for j in window]
        keys, _, placed = _stored(memory, i)
        chunk = LMChunk(frame_tokens[i].embeds[keeps[i]], placed.positions, placed.next_position)
        expected = _library_encode(llava, memory, [(k, v) for k, v, _ in stored], chunk)
        torch.testing.assert_close(keys, expected, rtol=1e-4, atol=1e-4)


def test_positions_stay_bounded_by_rerotating_the_window(
    llava: VideoLLM, frame_tokens: list[VisualTokens], make_memory: Callable[..., Memory]
) -> None:
    """The window spans at most half of the positions after the sink; when the cursor reaches
    the limit, the window is moved back to just after the sink (once per half window of blocks,
    not per block), and the next block encodes exactly as the library's prefill over the moved
    keys."""
    n = len(frame_tokens[0])
    sink = len(llava.build_prompt("?").prefix_ids)
    limit = sink + 4 * n
    memory = make_memory(llava, window_tokens=3 * n, store_dtype="float32", position_limit=limit)
    for i in range(len(frame_tokens)):
        memory.append_step("cam", frame_tokens[i], stamp(i))
    blocks = memory._streams["cam"].blocks
    assert all(int(m.layout.positions.max()) < limit for m in blocks)
    window = memory._streams["cam"].window
    assert window is not None
    # blocks 0-3 fill the positions; 4 and 7 each find the cursor at the limit
    assert window.rebases == 2
    assert window.live_span <= window.span_budget == 2 * n
    # a block encoded right after a re-basing: the library's prefill over the sink and the
    # previous block moved (with the library's own RoPE) to just after the sink
    rotary = llava.decoder.rotary_emb
    checked = 0
    for seq in (4, 7):
        keys, _, placed = _stored(memory, seq)
        assert int(placed.positions.min()) == sink + n
        k, v, old = _stored(memory, seq - 1)
        delta = torch.full((1, n), sink - int(old.positions.min()))
        cos, sin = rotary(k, delta)
        moved = [(apply_rotary_pos_emb(k, k, cos, sin)[0], v)]
        chunk = LMChunk(frame_tokens[seq].embeds, placed.positions, placed.next_position)
        torch.testing.assert_close(
            keys, _library_encode(llava, memory, moved, chunk), rtol=1e-4, atol=1e-4
        )
        checked += 1
    assert checked == 2


def test_pruned_blocks_keep_the_window_inside_the_positions(
    llava: VideoLLM, frame_tokens: list[VisualTokens], make_memory: Callable[..., Memory]
) -> None:
    """Pruned frames keep their tokens' places in the whole frame, so a window bounded only in
    tokens would outgrow the positions: the window is bounded in positions as well, and a long
    pruned stream never fails for lack of positions."""
    n = len(frame_tokens[0])
    sink = len(llava.build_prompt("?").prefix_ids)
    limit = sink + 6 * n
    # a window of 100 frames' tokens, but only 3 frames' positions
    memory = make_memory(llava, window_tokens=100 * n, store_dtype="float32", position_limit=limit)
    for i in range(40):
        frame = frame_tokens[i % len(frame_tokens)]
        keep = random_keep(max(1, n // 4), n, seed=i)
        memory.append_step("cam", frame, stamp(i), keep=keep)
    window = memory._streams["cam"].window
    assert window is not None and window.rebases > 0
    assert window.live_span <= window.span_budget
    assert all(int(m.layout.positions.max()) < limit for m in memory._streams["cam"].blocks)


def test_a_failed_encode_leaves_no_block_behind(
    llava: VideoLLM,
    frame_tokens: list[VisualTokens],
    make_memory: Callable[..., Memory],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A layer that fails mid-block (out of memory on a GPU, say): the window takes the block
    back, and the next blocks encode exactly as if it had never been tried."""
    memory = make_memory(llava, window_tokens=100, store_dtype="float32")
    memory.append_step("cam", frame_tokens[0], stamp(0))
    runner = memory.runner
    real = runner.run_layer

    def failing(index: int, *args: object, **kwargs: object) -> torch.Tensor:
        if index == 1:
            raise RuntimeError("out of memory")
        return real(index, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "run_layer", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        memory.append_step("cam", frame_tokens[1], stamp(1))
    monkeypatch.setattr(runner, "run_layer", real)
    window = memory._streams["cam"].window
    assert window is not None and len(window.blocks) == 1
    assert window.live_tokens == len(frame_tokens[0])
    memory.append_step("cam", frame_tokens[1], stamp(1))
    keys, _, placed = _stored(memory, 1)
    first = _stored(memory, 0)
    chunk = LMChunk(frame_tokens[1].embeds, placed.positions, placed.next_position)
    expected = _library_encode(llava, memory, [(first[0], first[1])], chunk)
    torch.testing.assert_close(keys, expected, rtol=1e-4, atol=1e-4)


def test_the_cached_causal_mask_is_handed_out_as_a_copy() -> None:
    """An in-place edit of a returned mask must not reach the next block's mask."""
    from stream_agent.memory.window import causal_mask

    first = causal_mask(5)
    expected = first.clone()
    first.fill_(False)
    first[0, 4] = True
    again = causal_mask(5)
    assert torch.equal(again, expected)
    assert torch.equal(again, torch.ones(5, 5, dtype=torch.bool).tril())
