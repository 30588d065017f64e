"""``paper`` mode: the released STC-Cacher, checked against the uncached encoder and against a
plain rewrite of the algorithm (tests/cacher/plain.py)."""

from __future__ import annotations

import pytest
import torch

from cacher import CacherConfig, StreamCacher
from cacher.layers import encoder_forward
from tests.cacher.plain import PlainSTC
from tests.cacher.tiny import (
    background,
    embed,
    make_layers,
    make_patches,
    rotary_2d,
    with_square,
)

GRID = (6, 6)


def _clip(count: int = 6) -> list[torch.Tensor]:
    """Patch embeddings of a square moving over a textured background, one step per frame, with
    a little sensor noise everywhere (so no two tokens tie exactly in similarity: the lowest-r
    choice among exactly unchanged tokens would depend on float rounding)."""
    patches = make_patches(GRID)
    bg = background(GRID)
    gen = torch.Generator().manual_seed(7)
    return [
        embed(
            patches,
            with_square(bg, 2 + 2 * i, 1 + 3 * i, 5) + 0.03 * torch.randn(bg.shape, generator=gen),
        )
        for i in range(count)
    ]


@torch.no_grad()
def test_reference_frames_equal_the_uncached_encoder() -> None:
    layers = make_layers()
    cacher = StreamCacher(layers, CacherConfig(mode="paper"), keep=(0, 2, -1))
    for i, x in enumerate(_clip(5)):
        out = cacher.encode(x)
        if i % 2 == 0:
            assert out.stats.kind == "reference"
            assert out.stats.refresh_reason == ("first" if i == 0 else "interval")
            full = encoder_forward(layers, x, keep=(0, 2, 3))
            assert out.keep == (0, 2, 3)
            for got, want in zip(out.hidden_states, full.hidden_states, strict=True):
                torch.testing.assert_close(got, want, atol=0, rtol=0)
        else:
            assert out.stats.kind == "selective"
            assert out.stats.reference_age == 1


@torch.no_grad()
def test_ratio_one_equals_the_uncached_encoder_on_every_frame() -> None:
    layers = make_layers()
    cacher = StreamCacher(layers, CacherConfig(mode="paper", update_token_ratio=1.0))
    for x in _clip(4):
        out = cacher.encode(x)
        assert out.stats.recomputed_per_layer == (36, 36, 36)
        torch.testing.assert_close(
            out.hidden_states[0], encoder_forward(layers, x).last, atol=2e-5, rtol=0
        )


@pytest.mark.parametrize("interval", [2, 3])
@pytest.mark.parametrize("ratio", [0.25, 0.5])
@torch.no_grad()
def test_matches_the_plain_algorithm_token_for_token(interval: int, ratio: float) -> None:
    layers = make_layers(seed=3)
    config = CacherConfig(mode="paper", update_token_ratio=ratio, cache_interval=interval)
    cacher = StreamCacher(layers, config)
    plain = PlainSTC(layers, ratio=ratio, interval=interval)
    for x in _clip(6):
        out = cacher.encode(x)
        want = plain(x[0])
        torch.testing.assert_close(out.hidden_states[0][0], want, atol=2e-5, rtol=0)
        if plain.dynamic:
            assert out.stats.kind == "selective"
            assert out.stats.recomputed_per_layer == tuple(len(d) for d in plain.dynamic)
            union = torch.zeros(36, dtype=torch.bool)
            for d in plain.dynamic:
                union[d] = True
            assert torch.equal(out.stats.recomputed, union)
        else:
            assert out.stats.kind == "reference"


@torch.no_grad()
def test_groups_with_rotary_match_the_plain_algorithm() -> None:
    """Qwen2-VL flavour: fused qkv, 2-D rotary, whole groups of 4 consecutive tokens."""
    layers = make_layers(seed=4, fused=True)
    rotary = rotary_2d(GRID)
    cacher = StreamCacher(layers, CacherConfig(mode="paper", group_size=4))
    plain = PlainSTC(layers, group=4)
    for x in _clip(5):
        out = cacher.encode(x, rotary=rotary)
        torch.testing.assert_close(out.hidden_states[0][0], plain(x[0], rotary), atol=2e-5, rtol=0)
        if plain.dynamic:
            assert out.stats.recomputed_per_layer == (8, 8, 8)  # max(1, int(9 * 0.25)) = 2 groups
            groups = out.stats.recomputed.view(-1, 4)
            assert bool((groups.all(dim=1) | ~groups.any(dim=1)).all())  # all or nothing


@torch.no_grad()
def test_a_frame_identical_to_the_reference_gives_the_reference_output() -> None:
    layers = make_layers(seed=5)
    x = _clip(1)[0]
    cacher = StreamCacher(layers, CacherConfig(mode="paper"))
    first = cacher.encode(x)
    again = cacher.encode(x.clone())
    assert again.stats.kind == "selective"
    assert again.stats.similarity_per_layer == pytest.approx((1.0, 1.0, 1.0), abs=1e-5)
    torch.testing.assert_close(again.hidden_states[0], first.hidden_states[0], atol=1e-5, rtol=0)
    assert again.stats.change is not None
    assert float(again.stats.change.abs().max()) < 1e-5


@torch.no_grad()
def test_selective_frames_stay_close_and_the_dynamic_set_follows_the_change() -> None:
    layers = make_layers(seed=6)
    patches = make_patches(GRID)
    bg = background(GRID)
    cacher = StreamCacher(layers, CacherConfig(mode="paper"))
    reference = cacher.encode(embed(patches, bg)).hidden_states[0]
    moved = embed(patches, with_square(bg, 8, 8, 8))  # covers patches (2..3, 2..3)
    out = cacher.encode(moved)
    full = encoder_forward(layers, moved).last
    cos = torch.nn.functional.cosine_similarity(out.hidden_states[0], full, dim=-1)[0]
    stale = torch.nn.functional.cosine_similarity(reference, full, dim=-1)[0]
    assert float(cos.mean()) > float(stale.mean())
    square = [r * 6 + c for r in (2, 3) for c in (2, 3)]
    assert bool(out.stats.recomputed[square].all())
    assert float(cos[square].min()) > 0.9
    assert float(cos[square].mean()) > float(stale[square].mean()) + 0.1
    assert out.stats.change is not None
    top = set(torch.topk(out.stats.change, 4).indices.tolist())
    assert top == set(square)
