"""What the methods are for: nothing new costs least; a moving object survives pruning."""

from __future__ import annotations

import pytest
import torch

from pruner import Budget, PrunerConfig, make_pruner
from tests.pruner.clips import background, moving_object_clip, run

GRID = (10, 12)
DIM = 16


def _config(method: str, adaptive: bool) -> PrunerConfig:
    return PrunerConfig(method=method, budget=Budget(ratio=0.5, adaptive=adaptive))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("method", "adaptive"),
    [("stc", True), ("dycoke", True), ("metok", True)],
)
def test_a_frame_identical_to_the_previous_ones_is_pruned_hardest(
    method: str, adaptive: bool
) -> None:
    moving, _ = moving_object_clip(GRID, DIM, frames=7)
    clip = moving + [moving[-1].clone() for _ in range(4)]
    kept = [s.num_kept for s in run(make_pruner(_config(method, adaptive)), clip, GRID)]
    repeats = kept[8:]  # the second and later copies of the last moving frame
    assert max(repeats) <= 1, kept
    assert max(repeats) < min(kept[:7]), kept


def test_holitom_a_static_span_costs_only_its_merged_first_frame() -> None:
    # HoliTom prices a segment, not a frame: the span's static tokens are merged into its first
    # frame, and the frames after it keep only the segment's dynamic tokens (none here).
    moving, _ = moving_object_clip(GRID, DIM, frames=7)
    clip = moving + [moving[-1].clone() for _ in range(9)]
    config = PrunerConfig(method="holitom", budget=Budget(ratio=0.1))
    selections = run(make_pruner(config), clip, GRID)
    kept = [s.num_kept for s in selections]
    assert min(kept[:7]) > 0, kept
    assert kept[9:16] == [0] * 7, kept  # frames 8..15 form the second window
    merged = selections[8].merged
    assert merged is not None and 0 < kept[8] <= 8 * 12
    covered = set(zip(merged.frame_index.tolist(), merged.index.tolist(), strict=True))
    assert covered == {(f, p) for f in range(8, 16) for p in range(120)}


@pytest.mark.parametrize(
    ("method", "adaptive"),
    [("stc", False), ("stc", True), ("dycoke", False), ("dycoke", True), ("holitom", False)],
)
def test_a_moving_object_keeps_its_tokens(method: str, adaptive: bool) -> None:
    # the object moves by its own size, so every frame shows it at new positions
    clip, where = moving_object_clip(GRID, DIM, frames=12, step=2)
    selections = run(make_pruner(_config(method, adaptive)), clip, GRID)
    for selection, positions in zip(selections, where, strict=True):
        kept = set(selection.indices.tolist())
        assert set(positions) <= kept, (selection.frame_index, positions, sorted(kept))
        assert selection.num_kept < selection.num_tokens or selection.frame_index % 4 == 0


def test_metok_gives_an_entering_object_full_resolution() -> None:
    generator = torch.Generator().manual_seed(5)
    scene = background(GRID, DIM)
    quiet = [scene + 0.01 * torch.randn(scene.shape, generator=generator) for _ in range(12)]
    moving, where = moving_object_clip(GRID, DIM, frames=4)
    config = PrunerConfig(method="metok", budget=Budget(ratio=0.5))
    selections = run(make_pruner(config), quiet + moving, GRID)
    entry = selections[12]
    assert entry.merged is None and set(where[0]) <= set(entry.indices.tolist())
    assert entry.num_kept == entry.num_tokens
    # after the first key_frames (6) frames of the opening event, the quiet scene is pooled
    assert all(s.num_kept < entry.num_kept for s in selections[6:12])


def test_holitom_merges_the_static_background_into_its_first_frame() -> None:
    clip, where = moving_object_clip(GRID, DIM, frames=6)
    config = PrunerConfig(method="holitom", budget=Budget(ratio=0.5))
    selections = run(make_pruner(config), clip, GRID)
    first = selections[0]
    assert first.merged is not None
    # the static background of the segment is represented by frame 0's merged tokens only
    static = set(range(120)) - {p for positions in where for p in positions}
    members = {
        (f, p)
        for f, p in zip(first.merged.frame_index.tolist(), first.merged.index.tolist(), strict=True)
    }
    for frame in range(1, 6):
        assert all((frame, p) in members for p in static)
        assert not static & set(selections[frame].indices.tolist())
