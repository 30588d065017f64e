"""Property tests on random streams: any shapes, budgets, methods and frame patterns."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pruner import (
    METHODS,
    Budget,
    DyCokeOptions,
    HoliTomOptions,
    METokOptions,
    PrunerConfig,
    Selection,
    make_pruner,
)
from tests.pruner.clips import check_selection

KINDS = ("random", "repeat", "constant", "nudge", "cut")


@st.composite
def streams(draw: st.DrawFn) -> tuple[PrunerConfig, tuple[int, int], list[torch.Tensor]]:
    method = draw(st.sampled_from(METHODS))
    grid = (draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    n = grid[0] * grid[1]
    dim = draw(st.integers(1, 6))
    adaptive = method != "holitom" and draw(st.booleans())
    if draw(st.booleans()):
        tokens = draw(st.integers(1, 40))
        budget = Budget(tokens=tokens, adaptive=adaptive, min_tokens=draw(st.integers(0, tokens)))
    else:
        ratio = draw(st.floats(0.05, 1.0))
        budget = Budget(ratio=ratio, adaptive=adaptive, min_tokens=draw(st.integers(0, 3)))
    dycoke = DyCokeOptions()
    too_small = 4 * budget.per_frame(n) < n or (budget.ratio is not None and budget.ratio < 0.25)
    if method == "dycoke" and too_small:
        dycoke = DyCokeOptions(k=draw(st.floats(0.0, 1.0)))
    config = PrunerConfig(
        method=method,  # type: ignore[arg-type]
        budget=budget,
        dycoke=dycoke,
        holitom=HoliTomOptions(window=draw(st.integers(1, 5)), tau=draw(st.floats(0.0, 0.95))),
        metok=METokOptions(credit_frames=draw(st.integers(0, 3)), min_history=1, window=6),
    )
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    frames: list[torch.Tensor] = []
    for kind in draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=9)):
        if kind == "repeat" and frames:
            frames.append(frames[-1].clone())
        elif kind == "constant":
            frames.append(torch.full((n, dim), 0.5))
        elif kind == "nudge" and frames:
            frames.append(frames[-1] + 0.01 * torch.randn(n, dim, generator=generator))
        else:
            frames.append(torch.randn(n, dim, generator=generator))
    return config, grid, frames


def _run(
    config: PrunerConfig, grid: tuple[int, int], frames: list[torch.Tensor]
) -> tuple[list[Selection], list[list[Selection]]]:
    pruner = make_pruner(config)
    groups: list[list[Selection]] = []
    for t, frame in enumerate(frames):
        ready = pruner.push(frame, grid, float(t))
        if ready:
            groups.append(ready)
        assert pruner.pending <= pruner.max_delay_frames
    rest = pruner.flush()
    if rest:
        groups.append(rest)
    assert pruner.pending == 0
    return [s for group in groups for s in group], groups


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_random_streams_keep_every_invariant(
    stream: tuple[PrunerConfig, tuple[int, int], list[torch.Tensor]],
) -> None:
    config, grid, frames = stream
    n = grid[0] * grid[1]
    per_frame = config.budget.per_frame(n)
    selections, groups = _run(config, grid, frames)
    assert [s.frame_index for s in selections] == list(range(len(frames)))
    for selection, frame in zip(selections, frames, strict=True):
        check_selection(selection, frame)
    kept = [s.num_kept for s in selections]

    if config.method == "none":
        assert kept == [n] * len(frames)
    elif config.method == "stc":
        low = min(per_frame, config.budget.min_tokens) if config.budget.adaptive else per_frame
        assert all(low <= k <= per_frame for k in kept)
    elif config.method == "dycoke":
        k = config.dycoke.k
        pruned = int((1 - k) * n) if k is not None else (4 * per_frame - n) // 3
        assert all(x <= pruned for i, x in enumerate(kept) if i % 4)
        if k is None:
            assert all(sum(kept[i : i + 4]) <= 4 * per_frame for i in range(0, len(kept), 4))
    elif config.method == "holitom":
        assert all(sum(s.num_kept for s in g) <= len(g) * per_frame for g in groups)
    else:
        credit = config.metok.credit_frames
        for i in range(len(kept)):
            for j in range(i + 1, len(kept) + 1):
                assert sum(kept[i:j]) <= (j - i + credit) * per_frame

    again, _ = _run(config, grid, frames)
    for a, b in zip(selections, again, strict=True):
        assert torch.equal(a.indices, b.indices) and torch.equal(a.tokens, b.tokens)
