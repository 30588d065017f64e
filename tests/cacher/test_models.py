"""The cacher behind real model adapters (tiny random checkpoints of the real transformers
classes): cached hidden states -> the family's head -> visual tokens close to the full encode."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
import torch.nn.functional as F

from cacher import AdaptiveOptions, CacherConfig, StreamCacher, stack_hidden

Frame = npt.NDArray[np.uint8]


def _frames(
    size: tuple[int, int], squares: list[tuple[int, int] | None], noise: int = 0
) -> list[Frame]:
    """Textured RGB frames with a bright square at each given (top, left); deterministic."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack(
        [
            128 + 90 * np.sin(xx / 5.0),
            128 + 90 * np.cos(yy / 7.0),
            128 + 60 * np.sin((xx + yy) / 9.0),
        ],
        axis=-1,
    )
    rng = np.random.default_rng(0)
    out = []
    for square in squares:
        frame = base + (rng.normal(0, noise, base.shape) if noise else 0)
        if square is not None:
            top, left = square
            frame[top : top + 20, left : left + 20] = (250, 20, 200)
        out.append(np.clip(frame, 0, 255).astype(np.uint8))
    return out


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


@pytest.fixture(scope="module")
def llava() -> Any:
    from stream_agent.models.testing import build_test_adapter

    return build_test_adapter("llava_onevision")


@pytest.fixture(scope="module")
def qwen() -> Any:
    from stream_agent.models.testing import build_test_adapter

    return build_test_adapter("qwen2_vl")


@pytest.mark.parametrize("mode", ["paper", "adaptive"])
@torch.no_grad()
def test_llava_onevision_tokens_from_cached_hidden_states(llava: Any, mode: str) -> None:
    spec = llava.vision_spec
    frames = _frames(spec.image_size, [(10, 10), (10, 10), (30, 40), (60, 50), (60, 50)])
    pixels = llava.preprocess(frames)
    # a 20-pixel square moves over 7x7 patches of 14: up to 9 of 49 tokens change at once
    config = (
        CacherConfig(mode="paper")
        if mode == "paper"
        else CacherConfig(mode="adaptive", adaptive=AdaptiveOptions(max_ratio=0.5))
    )
    cacher = StreamCacher(llava.vision_layers, config, keep=spec.feature_layers)
    outs = cacher.encode_many(llava.embed_patches(pixels))
    tokens = llava.tokens_from_hidden(stack_hidden(outs))
    full = llava.encode_pixels(pixels)
    kinds = [o.stats.kind for o in outs]
    if mode == "paper":
        assert kinds == ["reference", "selective"] * 2 + ["reference"]
    else:
        assert kinds[:2] == ["reference", "reused"] and "selective" in kinds
    reference = tokens[0].embeds
    for out, got, want in zip(outs, tokens, full, strict=True):
        assert got.grid == want.grid == spec.token_grid
        if out.stats.kind == "reference":
            torch.testing.assert_close(got.embeds, want.embeds, atol=1e-5, rtol=0)
            reference = got.embeds
        elif out.stats.kind == "reused":
            assert torch.equal(got.embeds, reference)
            torch.testing.assert_close(got.embeds, want.embeds, atol=1e-5, rtol=0)
        else:
            cos = _cosines(got.embeds, want.embeds)
            stale = _cosines(reference, want.embeds)
            if float(stale.min()) > 0.9999:  # the frame equals the reference
                torch.testing.assert_close(got.embeds, want.embeds, atol=1e-4, rtol=0)
            else:  # closer to the full encode than the reference frame's tokens are
                assert float(cos.mean()) > max(0.95, float(stale.mean()) + 0.02), out.stats


@torch.no_grad()
def test_llava_onevision_ratio_one_equals_the_full_encode(llava: Any) -> None:
    spec = llava.vision_spec
    pixels = llava.preprocess(_frames(spec.image_size, [(10, 10), (40, 30), (60, 60)]))
    config = CacherConfig(mode="paper", update_token_ratio=1.0)
    cacher = StreamCacher(llava.vision_layers, config, keep=spec.feature_layers)
    tokens = llava.tokens_from_hidden(stack_hidden(cacher.encode_many(llava.embed_patches(pixels))))
    for got, want in zip(tokens, llava.encode_pixels(pixels), strict=True):
        torch.testing.assert_close(got.embeds, want.embeds, atol=1e-4, rtol=0)


@torch.no_grad()
def test_qwen2_vl_frame_pairs_and_merge_windows(qwen: Any) -> None:
    """Steps of two frames; 2x2 merge windows over the raster-ordered patch grid."""
    size = (112, 112)
    spec = qwen.vision_spec_for_frame(*size)
    grid = spec.patch_grid
    squares: list[tuple[int, int] | None] = [None, None, None, None, (30, 60), (30, 60)]
    pixels = qwen.preprocess(_frames(size, squares))
    embeds = qwen.embed_patches(pixels)  # (steps, N, D)
    rotary, mask = qwen.vision_attention(pixels)
    config = CacherConfig(
        mode="adaptive", group_size=4, group_layout="window", adaptive=AdaptiveOptions(0.01)
    )
    cacher = StreamCacher(qwen.vision_layers, config, keep=spec.feature_layers)
    outs = cacher.encode_many(embeds, rotary=rotary, mask=mask, grid=grid)
    assert [o.stats.kind for o in outs] == ["reference", "reused", "selective"]
    tokens = qwen.tokens_from_hidden(stack_hidden(outs), grid=grid)
    full = qwen.encode_pixels(pixels)
    torch.testing.assert_close(tokens[0].embeds, full[0].embeds, atol=1e-5, rtol=0)
    assert torch.equal(tokens[1].embeds, tokens[0].embeds)
    # the changed step: whole 2x2 windows recomputed, and they cover the square
    changed = outs[2].stats.recomputed.view(grid)
    windows = changed.view(grid[0] // 2, 2, grid[1] // 2, 2).permute(0, 2, 1, 3).reshape(-1, 4)
    assert bool((windows.all(dim=1) | ~windows.any(dim=1)).all())
    assert spec.image_size == size  # 112 is a multiple of 28: no resize, 14-pixel patches
    assert bool(changed[30 // 14 : 49 // 14 + 1, 60 // 14 : 79 // 14 + 1].all())
    cos = _cosines(tokens[2].embeds, full[2].embeds)
    assert float(cos.mean()) > 0.9
    # the merged tokens of untouched windows are those of the reference step
    untouched = ~windows.any(dim=1)
    assert bool(untouched.any())
    assert float(_cosines(tokens[2].embeds[untouched], full[2].embeds[untouched]).min()) > 0.9
