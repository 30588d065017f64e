"""The contract every method shares: ordering, invariants, budgets, determinism, state, errors."""

from __future__ import annotations

import math

import pytest
import torch

from pruner import (
    METHODS,
    Budget,
    DyCokeOptions,
    FrameError,
    HoliTomOptions,
    PrunerConfig,
    Selection,
    ShapeChangedError,
    make_pruner,
)
from tests.pruner.clips import check_selection, moving_object_clip, run

GRID = (6, 7)
DIM = 12


def _config(method: str, **kwargs: object) -> PrunerConfig:
    return PrunerConfig(method=method, budget=Budget(ratio=0.34), **kwargs)  # type: ignore[arg-type]


def _same(a: list[Selection], b: list[Selection]) -> bool:
    return len(a) == len(b) and all(
        x.frame_index == y.frame_index
        and torch.equal(x.indices, y.indices)
        and torch.equal(x.tokens, y.tokens)
        and torch.equal(x.scores, y.scores)
        for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("method", METHODS)
def test_every_frame_comes_back_once_in_order_with_valid_selection(method: str) -> None:
    clip, _ = moving_object_clip(GRID, DIM, frames=13)
    pruner = make_pruner(_config(method))
    selections = run(pruner, clip, GRID, start=100.0)
    assert [s.frame_index for s in selections] == list(range(13))
    assert [s.timestamp for s in selections] == [100.0 + t for t in range(13)]
    for selection, frame in zip(selections, clip, strict=True):
        assert selection.method == method
        check_selection(selection, frame)
    stats = pruner.stats()
    assert stats.frames_in == stats.frames_out == 13
    assert stats.tokens_in == 13 * 42
    assert stats.tokens_out == sum(s.num_kept for s in selections)


@pytest.mark.parametrize("method", METHODS)
def test_runs_are_deterministic(method: str) -> None:
    clip, _ = moving_object_clip(GRID, DIM, frames=10)
    first = run(make_pruner(_config(method)), clip, GRID)
    second = run(make_pruner(_config(method)), clip, GRID)
    assert _same(first, second)


def test_kept_counts_within_budget() -> None:
    clip, _ = moving_object_clip(GRID, DIM, frames=16)
    n = GRID[0] * GRID[1]
    per_frame = Budget(ratio=0.34).per_frame(n)  # 14 of 42

    stc = run(make_pruner(_config("stc")), clip, GRID)
    assert all(s.num_kept == per_frame for s in stc)

    dycoke = run(make_pruner(_config("dycoke")), clip, GRID)
    for start in range(0, 16, 4):
        window = dycoke[start : start + 4]
        assert window[0].num_kept == n
        assert sum(s.num_kept for s in window) <= 4 * per_frame

    holitom = make_pruner(_config("holitom", holitom=HoliTomOptions(window=5)))
    waiting = 0
    for t, frame in enumerate(clip):
        ready = holitom.push(frame, GRID, float(t))
        waiting += 1
        if ready:
            assert sum(s.num_kept for s in ready) <= len(ready) * per_frame
            waiting -= len(ready)
        assert waiting == holitom.pending <= holitom.max_delay_frames
    rest = holitom.flush()
    assert len(rest) == waiting and sum(s.num_kept for s in rest) <= len(rest) * per_frame

    metok = make_pruner(_config("metok"))
    kept = [s.num_kept for s in run(metok, clip, GRID)]
    credit = metok.config.metok.credit_frames
    for i in range(len(kept)):
        for j in range(i + 1, len(kept) + 1):
            assert sum(kept[i:j]) <= (j - i + credit) * per_frame
    assert all(k == n for k in [s.num_kept for s in run(make_pruner(_config("none")), clip, GRID)])


@pytest.mark.parametrize("method", METHODS)
def test_reset_makes_a_fresh_stream(method: str) -> None:
    first_clip, _ = moving_object_clip(GRID, DIM, frames=9, seed=3)
    second_clip, _ = moving_object_clip(GRID, DIM, frames=9, seed=7)
    fresh = run(make_pruner(_config(method)), second_clip, GRID)
    reused = make_pruner(_config(method))
    run(reused, first_clip, GRID)
    reused.reset()
    again = run(reused, second_clip, GRID, start=0.0)  # the clock may restart after reset
    assert [s.frame_index for s in again] == list(range(9, 18))  # indices are never reused
    assert all(
        torch.equal(a.indices, b.indices) and torch.equal(a.tokens, b.tokens)
        for a, b in zip(fresh, again, strict=True)
    )
    assert reused.stats().resets == 1


@pytest.mark.parametrize("method", METHODS)
def test_streams_do_not_share_state(method: str) -> None:
    clip_a, _ = moving_object_clip(GRID, DIM, frames=8, seed=1)
    clip_b, _ = moving_object_clip(GRID, DIM, frames=8, seed=2)
    alone = run(make_pruner(_config(method)), clip_b, GRID)
    a, b = make_pruner(_config(method)), make_pruner(_config(method))
    interleaved: list[Selection] = []
    for t in range(8):
        a.push(clip_a[t], GRID, float(t))
        interleaved.extend(b.push(clip_b[t], GRID, float(t)))
    interleaved.extend(b.flush())
    assert _same(alone, interleaved)


def test_reset_discards_buffered_frames_and_counts_them() -> None:
    pruner = make_pruner(_config("holitom"))
    static = moving_object_clip(GRID, DIM, frames=1)[0][0]
    for t in range(3):
        assert pruner.push(static, GRID, float(t)) == []
    assert pruner.pending == 3
    pruner.reset()
    assert pruner.pending == 0 and pruner.flush() == []
    assert pruner.stats().frames_discarded == 3


@pytest.mark.parametrize("method", METHODS)
def test_shape_change_flushes_resets_and_never_mixes_frames(method: str) -> None:
    clip, _ = moving_object_clip(GRID, DIM, frames=5)
    other_grid = (5, 5)
    other, _ = moving_object_clip(other_grid, DIM, frames=1, seed=9)
    pruner = make_pruner(_config(method))
    out: list[Selection] = []
    for t, frame in enumerate(clip):
        out.extend(pruner.push(frame, GRID, float(t)))
    out.extend(pruner.push(other[0], other_grid, 0.5))  # clock may restart with the new shape
    out.extend(pruner.flush())
    assert [s.frame_index for s in out] == list(range(6))
    assert [s.grid for s in out] == [GRID] * 5 + [other_grid]
    fresh = run(make_pruner(_config(method)), other, other_grid)
    assert torch.equal(out[-1].indices, fresh[0].indices)
    assert torch.equal(out[-1].tokens, fresh[0].tokens)
    assert pruner.stats().shape_changes == 1


@pytest.mark.parametrize(
    "changed",
    [
        lambda x: (x.reshape(-1)[: 5 * 5 * DIM].reshape(25, DIM), (5, 5)),  # grid
        lambda x: (x[:, :-1], GRID),  # channels
        lambda x: (x.double(), GRID),  # dtype
    ],
)
def test_shape_change_can_raise(changed: object) -> None:
    clip, _ = moving_object_clip(GRID, DIM, frames=2)
    pruner = make_pruner(_config("stc", on_shape_change="raise"))
    pruner.push(clip[0], GRID, 0.0)
    tokens, grid = changed(clip[1])  # type: ignore[operator]
    with pytest.raises(ShapeChangedError, match="call flush"):
        pruner.push(tokens, grid, 1.0)
    assert len(pruner.push(clip[1], GRID, 1.0)) == 1  # the stream itself is intact


@pytest.mark.parametrize(
    ("tokens", "grid", "timestamp", "saliency", "message"),
    [
        (torch.ones(42), GRID, 0.0, None, "must be 2-D"),
        (torch.ones(42, DIM, dtype=torch.int64), GRID, 0.0, None, "floating point"),
        (torch.ones(40, DIM), GRID, 0.0, None, "do not fit grid"),
        (torch.ones(42, DIM), (6, 0), 0.0, None, "grid must be two positive integers"),
        (torch.ones(42, DIM), (6,), 0.0, None, "grid must be two positive integers"),
        (torch.full((42, DIM), math.nan), GRID, 0.0, None, "NaN"),
        (torch.ones(42, DIM), GRID, math.inf, None, "timestamp must be finite"),
        (torch.ones(42, DIM), GRID, 0.0, torch.ones(41), "saliency must have shape (42,)"),
        ([[1.0]], (1, 1), 0.0, None, "must be a torch.Tensor"),
    ],
)
def test_bad_frames_raise_frame_error(
    tokens: object, grid: object, timestamp: float, saliency: object, message: str
) -> None:
    pruner = make_pruner(_config("holitom"))
    with pytest.raises(FrameError) as caught:
        pruner.push(tokens, grid, timestamp, saliency=saliency)  # type: ignore[arg-type]
    assert message in str(caught.value)
    assert pruner.pending == 0


def test_timestamp_going_backwards_is_refused() -> None:
    pruner = make_pruner(_config("stc"))
    frame = torch.randn(42, DIM)
    pruner.push(frame, GRID, 5.0)
    pruner.push(frame, GRID, 5.0)  # equal is allowed
    with pytest.raises(FrameError, match="call reset"):
        pruner.push(frame, GRID, 4.0)
    pruner.reset()
    assert len(pruner.push(frame, GRID, 0.0)) == 1


@pytest.mark.parametrize("method", METHODS)
def test_low_precision_tokens_keep_their_dtype(method: str) -> None:
    clip, _ = moving_object_clip(GRID, DIM, frames=6)
    half = [x.to(torch.bfloat16) for x in clip]
    for selection, frame in zip(run(make_pruner(_config(method)), half, GRID), half, strict=True):
        check_selection(selection, frame)


def test_explicit_dycoke_k_follows_the_paper() -> None:
    clip, _ = moving_object_clip((14, 14), 8, frames=8)
    for k, kept in ((0.3, 137), (0.5, 98), (0.7, 58)):
        config = PrunerConfig(method="dycoke", dycoke=DyCokeOptions(k=k))
        counts = [s.num_kept for s in run(make_pruner(config), clip, (14, 14))]
        assert counts == [196, kept, kept, kept] * 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", METHODS)
def test_gpu_matches_cpu(method: str) -> None:
    clip, _ = moving_object_clip(GRID, DIM, frames=10)
    cpu = run(make_pruner(_config(method)), clip, GRID)
    gpu = run(make_pruner(_config(method)), [x.cuda() for x in clip], GRID)
    for a, b in zip(cpu, gpu, strict=True):
        assert b.indices.device.type == "cuda" and b.tokens.device.type == "cuda"
        assert torch.equal(a.indices, b.indices.cpu())
        torch.testing.assert_close(a.tokens, b.tokens.cpu())
