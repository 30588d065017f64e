"""DyCoke TTM against a transcription of the released offline code, plus toy cases."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pruner import Budget, BudgetError, DyCokeOptions, PrunerConfig, make_pruner
from pruner.dycoke import pruned_frame_share
from tests.pruner.clips import run

GRID = (4, 6)
N = 24


def released_ttm(frames: list[torch.Tensor], k: float) -> list[list[int]]:
    """``dycole_ttm`` over a whole clip, returning each output frame's kept positions (sorted).

    Pass 1 prunes odd frames against their even predecessor; pass 2 prunes frame i+2 against
    frame i for i = 0, 4, ... < F - 4; an odd last frame is dropped.
    """
    n_keep = int((1 - k) * N)
    kept: list[list[int]] = []

    def drop(reference: torch.Tensor, current: torch.Tensor) -> list[int]:
        similarity = F.cosine_similarity(reference, current, dim=-1)
        return sorted(similarity.topk(n_keep, largest=False).indices.tolist())

    for i in range(0, len(frames) - 1, 2):
        kept += [list(range(N)), drop(frames[i], frames[i + 1])]
    for i in range(0, len(frames) - 4, 4):
        kept[i + 2] = drop(frames[i], frames[i + 2])
    return kept


@pytest.mark.parametrize("k", [0.3, 0.5, 0.7])
def test_matches_the_released_code(k: float) -> None:
    generator = torch.Generator().manual_seed(11)
    base = torch.randn(N, 8, generator=generator)
    # nine frames: the offline code then treats frames 0..7 like a stream (frame 8 is dropped)
    frames = [base + torch.randn(N, 8, generator=generator) for _ in range(9)]
    config = PrunerConfig(method="dycoke", dycoke=DyCokeOptions(k=k))
    selections = run(make_pruner(config), frames, GRID)
    expected = released_ttm(frames, k)
    assert len(expected) == 8
    for selection, indices in zip(selections[:8], expected, strict=True):
        assert selection.indices.tolist() == indices


def test_toy_keeps_the_positions_that_differ_from_the_reference() -> None:
    first = torch.ones(N, 3)
    changed = {1: [5, 9], 2: [0, 20], 3: [7, 8]}
    frames = [first]
    for t in (1, 2, 3):
        # frames 1 and 2 change frame 0; frame 3 changes frame 2
        x = (frames[2] if t == 3 else first).clone()
        x[changed[t]] = torch.tensor([1.0, -1.0, 0.0])
        frames.append(x)
    config = PrunerConfig(method="dycoke", dycoke=DyCokeOptions(k=1 - 2 / N))  # keep 2
    kept = [s.indices.tolist() for s in run(make_pruner(config), frames, GRID)]
    assert kept == [list(range(N)), [5, 9], [0, 20], [7, 8]]
    scores = run(make_pruner(config), frames, GRID)[1].scores
    assert scores[5] > 0.5 and float(scores[0]) == pytest.approx(0.0, abs=1e-6)


def test_budget_sets_the_drop_share() -> None:
    config = PrunerConfig(method="dycoke", budget=Budget(ratio=0.5))
    assert pruned_frame_share(config, 196) == (4 * 98 - 196) // 3 == 65
    assert pruned_frame_share(PrunerConfig(method="dycoke", budget=Budget(ratio=0.25)), 196) == 0
    explicit = PrunerConfig(method="dycoke", dycoke=DyCokeOptions(k=0.7))
    assert pruned_frame_share(explicit, 196) == 58


def test_a_token_budget_below_a_quarter_is_refused_with_advice() -> None:
    pruner = make_pruner(PrunerConfig(method="dycoke", budget=Budget(tokens=5)))
    with pytest.raises(BudgetError, match="at least 6 tokens"):
        pruner.push(torch.randn(N, 3), GRID, 0.0)


def test_window_phase_restarts_after_reset() -> None:
    frames = [torch.randn(N, 3, generator=torch.Generator().manual_seed(t)) for t in range(3)]
    pruner = make_pruner(PrunerConfig(method="dycoke", budget=Budget(ratio=0.5)))
    assert [s.num_kept for s in run(pruner, frames, GRID)] == [24, 8, 8]
    pruner.reset()
    assert [s.num_kept for s in run(pruner, frames, GRID)] == [24, 8, 8]
