"""Bad input: rejected with a clear error and a clean reset, or (another resolution) encoded
afresh as a new reference -- never compared with a reference of another layout."""

from __future__ import annotations

import pytest
import torch

from cacher import CacherConfig, CacherError, EncoderError, FrameError, StreamCacher
from cacher.layers import encoder_forward, segment_mask
from tests.cacher.tiny import (
    D,
    background,
    embed,
    make_layers,
    make_patches,
    rotary_2d,
    with_square,
)

GRID = (6, 6)


def _cacher(mode: str = "adaptive", **kwargs: object) -> StreamCacher:
    return StreamCacher(make_layers(), CacherConfig(mode=mode, **kwargs))  # type: ignore[arg-type]


def _frame(grid: tuple[int, int] = GRID, seed: int = 2) -> torch.Tensor:
    return embed(make_patches(grid, position=False), background(grid, seed=seed))


@pytest.mark.parametrize("mode", ["paper", "adaptive"])
@torch.no_grad()
def test_a_frame_of_another_resolution_becomes_a_new_reference(mode: str) -> None:
    cacher = _cacher(mode)
    cacher.encode(_frame())
    cacher.encode(_frame(seed=3))
    other = _frame((4, 6))
    out = cacher.encode(other)
    assert out.stats.kind == "reference" and out.stats.refresh_reason == "shape"
    assert out.stats.index == 0 and out.stats.change is None
    torch.testing.assert_close(
        out.hidden_states[0], encoder_forward(cacher.layers, other).last, atol=0, rtol=0
    )
    assert cacher.counters.resets == 1
    patches = make_patches((4, 6), position=False)
    nxt = cacher.encode(embed(patches, with_square(background((4, 6)), 0, 0, 4)))
    assert nxt.stats.kind == "selective" and nxt.stats.index == 1


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.randn(36, D + 1), "width"),
        (torch.randn(2, 36, D), "one frame at a time"),
        (torch.randn(36, D, dtype=torch.float64), "float64"),
        (torch.ones(36, D, dtype=torch.long), "floating-point"),
        (torch.full((36, D), float("nan")), "NaN"),
    ],
)
@torch.no_grad()
def test_bad_frames_are_rejected_and_the_reference_dropped(bad: torch.Tensor, message: str) -> None:
    cacher = _cacher()
    cacher.encode(_frame())
    assert cacher.has_reference
    with pytest.raises(FrameError, match=message) as info:
        cacher.encode(bad)
    assert isinstance(info.value, CacherError) and isinstance(info.value, ValueError)
    assert not cacher.has_reference and cacher.state_bytes == 0
    assert cacher.counters.rejected_frames == 1
    out = cacher.encode(_frame())
    assert out.stats.refresh_reason == "first" and out.stats.index == 0


@torch.no_grad()
def test_rotary_and_masks_must_fit_the_frame() -> None:
    cacher = _cacher()
    x = _frame()
    with pytest.raises(FrameError, match="rotary cos"):
        cacher.encode(x, rotary=rotary_2d((4, 6)))
    with pytest.raises(FrameError, match="attention mask"):
        cacher.encode(x, mask=torch.ones(30, 30, dtype=torch.bool))
    with pytest.raises(FrameError, match="per-layer masks"):
        cacher.encode(x, mask=[None, None])
    with pytest.raises(FrameError, match="grid"):
        cacher.encode(x, grid=(5, 6))


@torch.no_grad()
def test_other_rotary_angles_or_masks_mean_a_new_reference() -> None:
    cacher = _cacher()
    x = _frame()
    cacher.encode(x, rotary=rotary_2d(GRID))
    assert cacher.encode(x, rotary=rotary_2d(GRID)).stats.kind == "reused"  # equal angles
    out = cacher.encode(x, rotary=rotary_2d((3, 12)))  # same count, other layout
    assert out.stats.refresh_reason == "shape"
    out = cacher.encode(x, rotary=rotary_2d((3, 12)), mask=segment_mask([18, 18]))
    assert out.stats.refresh_reason == "shape"
    torch.testing.assert_close(
        out.hidden_states[0],
        encoder_forward(
            cacher.layers, x, rotary=rotary_2d((3, 12)), mask=segment_mask([18, 18])
        ).last,
        atol=0,
        rtol=0,
    )


def test_groups_must_divide_the_frame() -> None:
    cacher = _cacher(group_size=5)
    with pytest.raises(FrameError, match="groups of 5"):
        cacher.encode(_frame())
    window = _cacher(group_size=4, group_layout="window")
    with pytest.raises(FrameError, match="grid=\\(rows, cols\\)"):
        window.encode(_frame())
    with pytest.raises(FrameError, match="2x2 windows"):
        window.encode(_frame((3, 4)), grid=(3, 4))


def test_encoder_errors() -> None:
    layers = make_layers()
    with pytest.raises(EncoderError, match="no layers"):
        StreamCacher((), CacherConfig())
    with pytest.raises(EncoderError, match="out of range"):
        StreamCacher(layers, CacherConfig(), keep=(4,))
    with pytest.raises(EncoderError, match="at least one"):
        StreamCacher(layers, CacherConfig(), keep=())
    with pytest.raises(FrameError, match="frames, tokens, width"):
        StreamCacher(layers, CacherConfig()).encode_many(torch.randn(36, D))


@torch.no_grad()
def test_off_mode_encodes_every_frame_in_full_and_keeps_nothing() -> None:
    cacher = _cacher("off")
    x = _frame()
    for _ in range(2):
        out = cacher.encode(x)
        assert out.stats.kind == "full" and out.stats.refresh_reason is None
        torch.testing.assert_close(
            out.hidden_states[0], encoder_forward(cacher.layers, x).last, atol=0, rtol=0
        )
    assert cacher.state_bytes == 0 and cacher.state_bytes_for(36) == 0
    assert cacher.counters.full_frames == 2
