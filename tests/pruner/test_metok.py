"""METok stage 1 (streaming form): pooling, event boundaries, novelty, budget."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pruner import Budget, METokOptions, PrunerConfig, make_pruner
from pruner.metok import quantile, stride_ladder
from pruner.ops import block_pool, pooled_count
from tests.pruner.clips import check_selection, run


@pytest.mark.parametrize(("grid", "stride"), [((5, 7), 2), ((5, 7), 4), ((6, 6), 3), ((2, 2), 8)])
def test_block_pool_matches_loops(grid: tuple[int, int], stride: int) -> None:
    h, w = grid
    x = torch.randn(h * w, 3, generator=torch.Generator().manual_seed(0))
    values, representative, block_of = block_pool(x, grid, stride)
    assert values.shape[0] == pooled_count(grid, stride) == representative.shape[0]
    k = 0
    for r0 in range(0, h, stride):
        for c0 in range(0, w, stride):
            rows = range(r0, min(r0 + stride, h))
            cols = range(c0, min(c0 + stride, w))
            members = [r * w + c for r in rows for c in cols]
            torch.testing.assert_close(values[k], x[members].mean(0))
            centre = ((rows[0] + rows[-1]) // 2) * w + (cols[0] + cols[-1]) // 2
            assert int(representative[k]) == centre
            assert all(int(block_of[m]) == k for m in members)
            k += 1
    assert bool((representative[1:] > representative[:-1]).all())


def test_block_pool_equals_bilinear_halving_like_the_released_pooling() -> None:
    x = torch.randn(14 * 14, 5, generator=torch.Generator().manual_seed(1))
    image = x.T.reshape(1, 5, 14, 14)
    bilinear = F.interpolate(image, size=(7, 7), mode="bilinear", align_corners=False)
    values, _, _ = block_pool(x, (14, 14), 2)
    torch.testing.assert_close(values, bilinear.reshape(5, 49).T)


def test_quantile_and_ladder() -> None:
    values = [0.3, 0.1, 0.9, 0.5]
    for q in (0.0, 0.129, 0.5, 1.0):
        expected = float(torch.quantile(torch.tensor(values, dtype=torch.float64), q))
        assert quantile(values, q) == pytest.approx(expected)
    assert stride_ladder((14, 14), (1, 2, 4)) == [1, 2, 4, 8, 16]
    assert [pooled_count((14, 14), s) for s in (1, 2, 4, 8, 16)] == [196, 49, 16, 4, 1]


def _scene(seed: int, n: int = 16, dim: int = 8) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)) + 1.0


def _noisy(scene: torch.Tensor, count: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [scene + 0.02 * torch.randn(scene.shape, generator=generator) for _ in range(count)]


def test_toy_events_novel_scenes_get_fine_strides_known_ones_coarse() -> None:
    # scene A for 8 frames, a new scene B for 8, then A again: B is novel, the return is not
    a, b = _scene(1), _scene(2)
    clip = _noisy(a, 8, 10) + _noisy(b, 8, 11) + _noisy(a, 8, 12)
    options = METokOptions(key_frames=2, credit_frames=100)
    config = PrunerConfig(method="metok", budget=Budget(ratio=1.0), metok=options)
    kept = [s.num_kept for s in run(make_pruner(config), clip, (4, 4))]
    # strides 1, 2, 4 on a 4x4 grid keep 16, 4, 1 tokens
    assert kept[:2] == [16, 16] and set(kept[2:8]) == {4}  # novel opening event
    assert kept[8:10] == [16, 16] and set(kept[10:16]) == {4}  # B is new: a novel event
    assert kept[16:18] == [4, 4] and set(kept[18:24]) == {1}  # back to A: a known event


def test_boundaries_need_history_and_a_drop() -> None:
    a, b = _scene(1), _scene(2)
    options = METokOptions(key_frames=1, min_history=3, credit_frames=100)
    config = PrunerConfig(method="metok", budget=Budget(ratio=1.0), metok=options)
    # a cut at the third frame comes before three similarities are known: no new event
    early = [
        s.num_kept for s in run(make_pruner(config), _noisy(a, 2, 3) + _noisy(b, 3, 4), (4, 4))
    ]
    assert early == [16, 4, 4, 4, 4]
    # identical frames never cut (the similarity is not below its own quantile)
    same = [s.num_kept for s in run(make_pruner(config), [a] * 6, (4, 4))]
    assert same == [16, 4, 4, 4, 4, 4]


def test_token_bucket_starts_full_and_bounds_every_run_of_frames() -> None:
    scenes = [_scene(s, n=64) for s in range(12)]  # a new scene every frame
    options = METokOptions(credit_frames=2, min_history=1)
    config = PrunerConfig(method="metok", budget=Budget(tokens=16), metok=options)
    selections = run(make_pruner(config), scenes, (8, 8))
    kept = [s.num_kept for s in selections]
    assert kept[0] == 16  # 64 tokens cost more than the full bucket (2 * 16 + 16): stride 2
    for i in range(len(kept)):
        for j in range(i + 1, len(kept) + 1):
            assert sum(kept[i:j]) <= (j - i + 2) * 16
    for selection, frame in zip(selections, scenes, strict=True):
        check_selection(selection, frame)


def test_adaptive_identical_frame_costs_one_pooled_token() -> None:
    a = _scene(5)
    config = PrunerConfig(method="metok", budget=Budget(ratio=0.5, adaptive=True))
    selections = run(make_pruner(config), [a, a, a], (4, 4))
    # the first frame is all new (the full 4x4 grid costs 16 <= the bucket); then nothing changes
    assert [s.num_kept for s in selections] == [16, 1, 1]
    last = selections[-1]
    assert last.num_kept == 1 and last.merged is not None
    assert last.merged.members(0) == [(2, p) for p in range(16)]
    torch.testing.assert_close(last.tokens[0], a.mean(0))
