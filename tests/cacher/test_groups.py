"""Groups of tokens reused or recomputed together (Qwen2-VL's 2x2 merge windows), on encoders
built by hand from cacher.layers records with fused qkv and 2-D rotary angles."""

from __future__ import annotations

import torch

from cacher import AdaptiveOptions, CacherConfig, StreamCacher
from cacher.layers import encoder_forward
from cacher.selection import consecutive_groups, window_groups
from tests.cacher.plain import PlainSTC
from tests.cacher.tiny import background, embed, make_layers, make_patches, rotary_2d, with_square

GRID = (4, 6)


def test_window_groups_list_each_2x2_window() -> None:
    grouping = window_groups(GRID, 2, "cpu")
    assert grouping.order is not None
    assert grouping.order.view(-1, 4).tolist() == [
        [0, 1, 6, 7],
        [2, 3, 8, 9],
        [4, 5, 10, 11],
        [12, 13, 18, 19],
        [14, 15, 20, 21],
        [16, 17, 22, 23],
    ]
    scores = torch.arange(24.0)
    assert grouping.pool(scores).tolist() == [3.5, 5.5, 7.5, 15.5, 17.5, 19.5]
    assert grouping.tokens(torch.tensor([4, 1])).tolist() == [2, 3, 8, 9, 14, 15, 20, 21]
    runs = consecutive_groups(4)
    assert runs.pool(scores).tolist() == [1.5, 5.5, 9.5, 13.5, 17.5, 21.5]
    assert runs.tokens(torch.tensor([2, 0])).tolist() == [0, 1, 2, 3, 8, 9, 10, 11]


def _frames(count: int) -> list[torch.Tensor]:
    patches = make_patches(GRID, position=False)
    bg = background(GRID)
    gen = torch.Generator().manual_seed(5)
    return [
        embed(
            patches,
            with_square(bg, 1 + 2 * i, 2 + 3 * i, 5) + 0.03 * torch.randn(bg.shape, generator=gen),
        )
        for i in range(count)
    ]


@torch.no_grad()
def test_paper_windows_with_rotary_match_the_plain_algorithm() -> None:
    layers = make_layers(seed=11, fused=True)
    rotary = rotary_2d(GRID)
    order = window_groups(GRID, 2, "cpu").order
    config = CacherConfig(mode="paper", group_size=4, group_layout="window")
    cacher = StreamCacher(layers, config)
    plain = PlainSTC(layers, group=4, order=order)
    for x in _frames(5):
        out = cacher.encode(x, rotary=rotary, grid=GRID)
        torch.testing.assert_close(out.hidden_states[0][0], plain(x[0], rotary), atol=2e-5, rtol=0)
        if plain.dynamic:
            assert out.stats.recomputed_per_layer == (4, 4, 4)  # max(1, int(6 * 0.25)) windows
            union = torch.zeros(24, dtype=torch.bool)
            for d in plain.dynamic:
                union[d] = True
            assert torch.equal(out.stats.recomputed, union)


@torch.no_grad()
def test_adaptive_recomputes_whole_windows() -> None:
    layers = make_layers(seed=12, fused=True)
    rotary = rotary_2d(GRID)
    patches = make_patches(GRID, position=False)
    bg = background(GRID)
    config = CacherConfig(
        mode="adaptive", group_size=4, group_layout="window", adaptive=AdaptiveOptions(0.01)
    )
    cacher = StreamCacher(layers, config)
    cacher.encode(embed(patches, bg), rotary=rotary, grid=GRID)
    # one patch changes: row 2, col 3 -> the window of patches (2..3, 2..3)
    out = cacher.encode(embed(patches, with_square(bg, 8, 12, 4)), rotary=rotary, grid=GRID)
    assert out.stats.kind == "selective"
    assert torch.nonzero(out.stats.recomputed).flatten().tolist() == [14, 15, 20, 21]
    # all windows changing a little and recomputed whole equals the full encode
    everything = CacherConfig(
        mode="adaptive",
        group_size=4,
        group_layout="window",
        adaptive=AdaptiveOptions(token_threshold=0.0, max_ratio=1.0, drift_similarity=0.0),
    )
    cacher = StreamCacher(layers, everything)
    frames = _frames(2)
    cacher.encode(frames[0], rotary=rotary, grid=GRID)
    out = cacher.encode(frames[1], rotary=rotary, grid=GRID)
    torch.testing.assert_close(
        out.hidden_states[0],
        encoder_forward(layers, frames[1], rotary=rotary).last,
        atol=2e-5,
        rtol=0,
    )


@torch.no_grad()
def test_per_layer_masks_are_applied_to_the_recomputed_rows() -> None:
    """Qwen2.5-VL style: window attention in some layers (a mask per layer), full in others."""
    layers = make_layers(seed=13, fused=True)
    rotary = rotary_2d(GRID)
    cols = torch.arange(24) % 6
    halves = (cols[:, None] < 3) == (cols[None, :] < 3)  # left and right halves attend apart
    masks = (halves, None, halves)
    config = CacherConfig(mode="paper", update_token_ratio=1.0, group_size=4, group_layout="window")
    cacher = StreamCacher(layers, config)
    for x in _frames(2):
        out = cacher.encode(x, rotary=rotary, mask=masks, grid=GRID)
        h = x
        for layer, mask in zip(layers, masks, strict=True):
            h = encoder_forward((layer,), h, rotary=rotary, mask=mask).last
        torch.testing.assert_close(out.hidden_states[0], h, atol=2e-5, rtol=0)
