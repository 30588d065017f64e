"""``adaptive`` mode: reuse of unchanged frames, recompute of changed regions only, reference
refresh on scene change, drift and age, floor and ceiling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cacher import AdaptiveOptions, CacherConfig, StreamCacher
from cacher.layers import encoder_forward
from cacher.selection import over_threshold
from tests.cacher.plain import PlainSTC, plain_adaptive_frame
from tests.cacher.tiny import (
    background,
    embed,
    make_layers,
    make_patches,
    touched_tokens,
    with_square,
)

GRID = (6, 6)
TOKENS = 36


def _adaptive(**options: float) -> CacherConfig:
    return CacherConfig(mode="adaptive", adaptive=AdaptiveOptions(**options))  # type: ignore[arg-type]


@torch.no_grad()
def test_an_identical_frame_reuses_the_reference_output_exactly() -> None:
    layers = make_layers()
    patches = make_patches(GRID)
    x = embed(patches, background(GRID))
    cacher = StreamCacher(layers, _adaptive(), keep=(1, -1))
    first = cacher.encode(x)
    assert first.stats.kind == "reference" and first.stats.refresh_reason == "first"
    again = cacher.encode(x.clone())
    assert again.stats.kind == "reused"
    assert again.stats.recomputed_per_layer == (0, 0, 0)
    assert not bool(again.stats.recomputed.any())
    assert again.stats.reference_age == 1
    for got, want in zip(again.hidden_states, first.hidden_states, strict=True):
        assert torch.equal(got, want)
        assert got is not want  # a copy: the caller may change it without touching the cache
    assert cacher.counters.reused_frames == 1


@torch.no_grad()
def test_recomputed_tokens_are_exactly_the_region_that_moved() -> None:
    layers = make_layers(seed=1)
    patches = make_patches(GRID)
    bg = background(GRID)
    cacher = StreamCacher(layers, _adaptive(max_ratio=0.5))  # up to 8 of 36 tokens change
    reference = cacher.encode(embed(patches, with_square(bg, 1, 1, 6))).hidden_states[0]
    for top, left in [(9, 10), (12, 14), (5, 17)]:
        moved = embed(patches, with_square(bg, top, left, 6))
        out = cacher.encode(moved)
        assert out.stats.kind == "selective"
        region = touched_tokens(1, 1, 6, GRID) | touched_tokens(top, left, 6, GRID)
        assert set(torch.nonzero(out.stats.recomputed).flatten().tolist()) == region
        assert out.stats.recomputed_per_layer[0] == len(region)
        assert out.stats.change is not None
        outside = torch.ones(TOKENS, dtype=torch.bool)
        outside[list(region)] = False
        assert float(out.stats.change[outside].abs().max()) < 1e-6
        # the moved square's tokens are close to the full encode, much closer than reuse would be
        full = encoder_forward(layers, moved).last
        cos = F.cosine_similarity(out.hidden_states[0], full, dim=-1)[0]
        stale = F.cosine_similarity(reference, full, dim=-1)[0]
        square = sorted(touched_tokens(top, left, 6, GRID))
        assert float(cos[square].mean()) > float(stale[square].mean()) + 0.1
        assert float(cos.mean()) > float(stale.mean())


@torch.no_grad()
def test_matches_the_plain_algorithm() -> None:
    layers = make_layers(seed=2)
    patches = make_patches(GRID)
    bg = background(GRID)
    gen = torch.Generator().manual_seed(3)
    frames = [
        embed(
            patches, with_square(bg, 4 * i, 3 * i, 7) + 0.01 * torch.randn(bg.shape, generator=gen)
        )
        for i in range(4)
    ]
    threshold = 0.01
    config = _adaptive(token_threshold=threshold, max_ratio=1.0, drift_similarity=0.0)
    cacher = StreamCacher(layers, config)
    plain = PlainSTC(layers, interval=1000)
    cacher.encode(frames[0])
    plain(frames[0][0])
    for x in frames[1:]:
        out = cacher.encode(x)
        want, dynamic = plain_adaptive_frame(layers, plain.cache, x[0], threshold)
        assert out.stats.kind == "selective"
        assert out.stats.recomputed_per_layer == tuple(len(d) for d in dynamic)
        assert 0 < out.stats.recomputed_share < 1
        torch.testing.assert_close(out.hidden_states[0][0], want, atol=2e-5, rtol=0)


@torch.no_grad()
def test_all_tokens_recomputed_equals_the_uncached_encoder() -> None:
    layers = make_layers(seed=3)
    patches = make_patches(GRID)
    bg = background(GRID)
    gen = torch.Generator().manual_seed(4)
    config = _adaptive(token_threshold=0.0, min_ratio=1.0, max_ratio=1.0, drift_similarity=0.0)
    cacher = StreamCacher(layers, config)
    for i in range(3):
        x = embed(patches, bg + 0.05 * torch.randn(bg.shape, generator=gen))
        out = cacher.encode(x)
        assert out.stats.kind == ("reference" if i == 0 else "selective")
        assert out.stats.recomputed_per_layer == (TOKENS,) * 3
        torch.testing.assert_close(
            out.hidden_states[0], encoder_forward(layers, x).last, atol=2e-5, rtol=0
        )


@torch.no_grad()
def test_a_scene_change_refreshes_the_reference() -> None:
    layers = make_layers(seed=4)
    patches = make_patches(GRID)
    cacher = StreamCacher(layers, _adaptive())
    cacher.encode(embed(patches, background(GRID, seed=1)))
    other = embed(patches, -background(GRID, seed=2))
    out = cacher.encode(other)
    assert out.stats.kind == "reference" and out.stats.refresh_reason == "scene_change"
    assert out.stats.change is not None and float(out.stats.change.mean()) > 0.1
    torch.testing.assert_close(
        out.hidden_states[0], encoder_forward(layers, other).last, atol=0, rtol=0
    )
    assert cacher.encode(other.clone()).stats.kind == "reused"  # the cut is the new reference


@torch.no_grad()
def test_small_changes_everywhere_count_as_drift() -> None:
    """Lighting: every token changes a little, none enough to be recomputed."""
    layers = make_layers(seed=5)
    patches = make_patches(GRID)
    bg = background(GRID)
    cacher = StreamCacher(layers, _adaptive(token_threshold=0.05, drift_similarity=0.999))
    cacher.encode(embed(patches, bg))
    dimmer = embed(patches, bg * 0.9 + 0.05)
    out = cacher.encode(dimmer)
    assert out.stats.change is not None
    assert float(out.stats.change.max()) < 0.05  # no single token over the threshold
    assert out.stats.kind == "reference" and out.stats.refresh_reason == "drift"


@torch.no_grad()
def test_noise_under_the_threshold_is_reused() -> None:
    layers = make_layers(seed=6)
    patches = make_patches(GRID)
    bg = background(GRID)
    gen = torch.Generator().manual_seed(1)
    cacher = StreamCacher(layers, _adaptive())
    first = cacher.encode(embed(patches, bg))
    noisy = embed(patches, bg + 0.002 * torch.randn(bg.shape, generator=gen))
    out = cacher.encode(noisy)
    assert out.stats.kind == "reused"
    assert torch.equal(out.hidden_states[0], first.hidden_states[0])


@torch.no_grad()
def test_the_reference_is_refreshed_at_max_age() -> None:
    layers = make_layers(seed=7)
    patches = make_patches(GRID)
    bg = background(GRID)
    cacher = StreamCacher(layers, _adaptive(max_age=2))
    kinds = []
    for i in range(6):
        out = cacher.encode(embed(patches, with_square(bg, 4 * (i % 2), 4, 4)))
        kinds.append((out.stats.kind, out.stats.refresh_reason, out.stats.reference_age))
    assert kinds == [
        ("reference", "first", 0),
        ("selective", None, 1),
        ("reused", None, 2),
        ("reference", "max_age", 0),
        ("selective", None, 1),
        ("reused", None, 2),
    ]


@torch.no_grad()
def test_a_change_that_came_to_rest_becomes_the_reference() -> None:
    """Rent or buy: a square that appears and stays is recomputed on every frame until that has
    cost ``settle_cost`` frames' worth of tokens; then the frame becomes the reference."""
    layers = make_layers(seed=10)
    patches = make_patches(GRID)
    bg = background(GRID)
    cacher = StreamCacher(layers, _adaptive(settle_cost=0.2))
    cacher.encode(embed(patches, bg))
    stays = embed(patches, with_square(bg, 8, 8, 8))  # 4 of 36 tokens
    kinds = [cacher.encode(stays.clone()).stats for _ in range(5)]
    # frame 1 differs from its previous frame too; frames 2 and 3 add 4/36 each: 0.22 >= 0.2
    assert [(s.kind, s.refresh_reason) for s in kinds] == [
        ("selective", None),
        ("selective", None),
        ("reference", "settled"),
        ("reused", None),
        ("reused", None),
    ]


@torch.no_grad()
def test_the_floor_recomputes_the_most_changed_tokens() -> None:
    layers = make_layers(seed=8)
    patches = make_patches(GRID)
    bg = background(GRID)
    cacher = StreamCacher(layers, _adaptive(min_ratio=0.25, max_ratio=0.5))
    cacher.encode(embed(patches, bg))
    out = cacher.encode(embed(patches, with_square(bg, 0, 0, 4)))  # one token changes
    assert out.stats.recomputed_per_layer == (9, 9, 9)  # int(0.25 * 36)
    assert bool(out.stats.recomputed[0])


def test_over_threshold_clamps_to_floor_and_ceiling() -> None:
    change = torch.tensor([0.5, 0.0, 0.3, 0.2, 0.01, 0.4])
    assert over_threshold(change, 0.1, 0, 6).tolist() == [0, 2, 3, 5]
    assert over_threshold(change, 0.1, 0, 2).tolist() == [0, 5]  # the two most changed
    assert over_threshold(change, 0.35, 3, 6).tolist() == [0, 2, 5]  # filled up to the floor
    assert over_threshold(change, 0.9, 0, 6).tolist() == []


@pytest.mark.parametrize("mode", ["paper", "adaptive"])
@torch.no_grad()
def test_a_half_precision_cache_halves_the_state_and_stays_close(mode: str) -> None:
    layers = make_layers(seed=9)
    patches = make_patches(GRID)
    bg = background(GRID)
    gen = torch.Generator().manual_seed(2)
    # noise everywhere, so that half-precision rounding cannot reorder tied similarities
    frames = [
        embed(
            patches, with_square(bg, 2 * i, 3 * i, 6) + 0.03 * torch.randn(bg.shape, generator=gen)
        )
        for i in range(3)
    ]
    full_precision = StreamCacher(layers, CacherConfig(mode=mode))  # type: ignore[arg-type]
    half = StreamCacher(layers, CacherConfig(mode=mode, cache_dtype="float16"))  # type: ignore[arg-type]
    for x in frames[:2]:
        a = full_precision.encode(x)
        b = half.encode(x)
        assert b.hidden_states[0].dtype == torch.float32
        torch.testing.assert_close(b.hidden_states[0], a.hidden_states[0], atol=5e-3, rtol=5e-3)
    kept = 2 if mode == "adaptive" else 0  # the last hidden state and the previous frame
    per_layer = 4 * TOKENS * 32
    inputs = (1 + kept) * TOKENS * 32 * 4
    assert full_precision.state_bytes == 3 * per_layer * 4 + inputs
    assert half.state_bytes == 3 * per_layer * 2 + inputs
    assert half.state_bytes_for(TOKENS) == half.state_bytes
