"""Tiny encoders built from cacher.layers records, and frames for them, shared by the cacher tests.

Two flavours: SigLIP-like (LayerNorm, separate q/k/v, GELU MLP, absolute positions) and
Qwen2-VL-like (fused qkv, 2-D rotary angles). Weights are random with a spread that keeps
attention far from uniform, so a wrong row or a wrong reuse shows in the outputs.
"""

from __future__ import annotations

import math

import torch

from cacher.layers import (
    MLP,
    EncoderLayer,
    FusedQKV,
    LayerNorm,
    Linear,
    PatchEmbedding,
    Rotary,
    SeparateQKV,
    embed_patches,
)

D, HEADS, HD, FF = 32, 4, 8, 64
PATCH = 4


def _lin(gen: torch.Generator, out: int, inp: int) -> Linear:
    return Linear(
        torch.randn(out, inp, generator=gen) * 0.25, torch.randn(out, generator=gen) * 0.1
    )


def _ln(gen: torch.Generator) -> LayerNorm:
    return LayerNorm(
        1 + torch.randn(D, generator=gen) * 0.1, torch.randn(D, generator=gen) * 0.1, 1e-6
    )


def make_layers(count: int = 3, *, seed: int = 0, fused: bool = False) -> tuple[EncoderLayer, ...]:
    """``count`` pre-LN layers of width 32 with 4 heads (fused qkv for the Qwen2-VL flavour)."""
    gen = torch.Generator().manual_seed(seed)
    layers = []
    for _ in range(count):
        n1 = _ln(gen)
        qkv = (
            FusedQKV(_lin(gen, 3 * D, D))
            if fused
            else SeparateQKV(_lin(gen, D, D), _lin(gen, D, D), _lin(gen, D, D))
        )
        layers.append(
            EncoderLayer(
                norm1=n1,
                qkv=qkv,
                out=_lin(gen, D, D),
                norm2=_ln(gen),
                mlp=MLP(_lin(gen, FF, D), _lin(gen, D, FF), "gelu_pytorch_tanh"),
                num_heads=HEADS,
                head_dim=HD,
                scale=HD**-0.5,
            )
        )
    return tuple(layers)


def make_patches(
    grid: tuple[int, int] = (6, 6), *, seed: int = 1, position: bool = True
) -> PatchEmbedding:
    gen = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1]
    return PatchEmbedding(
        weight=torch.randn(D, 3, PATCH, PATCH, generator=gen) * 0.15,
        bias=torch.randn(D, generator=gen) * 0.05,
        position=torch.randn(n, D, generator=gen) * 0.3 if position else None,
    )


def rotary_2d(grid: tuple[int, int]) -> Rotary:
    """Qwen2-VL-style 2-D rotary angles for a raster grid: half the frequencies follow the row,
    half the column (``head_dim`` 8: 2 + 2 frequencies, duplicated for the rotate-half form)."""
    rows, cols = grid
    r = torch.arange(rows).repeat_interleave(cols).float()
    c = torch.arange(cols).repeat(rows).float()
    inv = 1.0 / (10000 ** (torch.arange(0, HD // 2, 2).float() / (HD // 2)))
    freqs = torch.cat([r[:, None] * inv, c[:, None] * inv], dim=-1)  # (n, hd/2)
    emb = torch.cat([freqs, freqs], dim=-1)
    return Rotary(emb.cos(), emb.sin())


def background(grid: tuple[int, int] = (6, 6), seed: int = 2) -> torch.Tensor:
    """A textured RGB image ``(3, H, W)`` in [-1, 1] covering ``grid`` patches."""
    gen = torch.Generator().manual_seed(seed)
    h, w = grid[0] * PATCH, grid[1] * PATCH
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    base = torch.stack(
        [torch.sin(xx / 3.0), torch.cos(yy / 4.0), torch.sin((xx + yy) / 5.0)], dim=0
    )
    return (0.6 * base + 0.2 * torch.randn(3, h, w, generator=gen)).clamp(-1, 1)


def with_square(image: torch.Tensor, top: int, left: int, size: int = PATCH) -> torch.Tensor:
    """``image`` with a bright square of ``size`` pixels at (top, left)."""
    out = image.clone()
    out[:, top : top + size, left : left + size] = torch.tensor([1.0, -1.0, 0.8])[:, None, None]
    return out


def touched_tokens(top: int, left: int, size: int, grid: tuple[int, int]) -> set[int]:
    """Raster indices of the patches a square at (top, left) overlaps."""
    rows = range(top // PATCH, math.ceil((top + size) / PATCH))
    cols = range(left // PATCH, math.ceil((left + size) / PATCH))
    return {r * grid[1] + c for r in rows for c in cols}


def embed(patches: PatchEmbedding, image: torch.Tensor) -> torch.Tensor:
    """Patch embeddings ``(1, N, D)`` of one image."""
    return embed_patches(patches, image[None])
