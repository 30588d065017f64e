"""The encoder-layer maths of cacher.layers against straightforward references, and its pieces
against each other (a subset of rows computed alone equals the same rows of the full layer)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cacher.layers import (
    MLP,
    EncoderLayer,
    FusedQKV,
    GatedMLP,
    LayerNorm,
    LayerSpecError,
    Linear,
    PatchEmbedding,
    RMSNorm,
    Rotary,
    SeparateQKV,
    activation,
    apply_rotary,
    attend,
    embed_patches,
    encoder_forward,
    layer_forward,
    mlp_branch,
    norm,
    project_out,
    project_qkv,
    segment_mask,
)

D, HEADS, HD, FF = 32, 4, 8, 48


def _lin(gen: torch.Generator, out: int, inp: int) -> Linear:
    return Linear(torch.randn(out, inp, generator=gen) * 0.2, torch.randn(out, generator=gen) * 0.1)


def _ln(gen: torch.Generator) -> LayerNorm:
    return LayerNorm(
        1 + torch.randn(D, generator=gen) * 0.1, torch.randn(D, generator=gen) * 0.1, 1e-6
    )


def make_layer(seed: int = 0, *, act: str = "gelu_pytorch_tanh") -> EncoderLayer:
    gen = torch.Generator().manual_seed(seed)
    return EncoderLayer(
        norm1=_ln(gen),
        qkv=SeparateQKV(_lin(gen, D, D), _lin(gen, D, D), _lin(gen, D, D)),
        out=_lin(gen, D, D),
        norm2=_ln(gen),
        mlp=MLP(_lin(gen, FF, D), _lin(gen, D, FF), act),
        num_heads=HEADS,
        head_dim=HD,
        scale=HD**-0.5,
    )


def reference_layer(layer: EncoderLayer, h: torch.Tensor) -> torch.Tensor:
    """A pre-LN layer written out with torch.nn modules and an explicit softmax."""
    assert isinstance(layer.qkv, SeparateQKV) and isinstance(layer.mlp, MLP)
    assert isinstance(layer.norm1, LayerNorm) and isinstance(layer.norm2, LayerNorm)
    ln1 = torch.nn.LayerNorm(D, eps=layer.norm1.eps)
    ln1.load_state_dict({"weight": layer.norm1.weight, "bias": layer.norm1.bias})
    x = ln1(h)
    b, n, _ = x.shape

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(b, n, HEADS, HD).transpose(1, 2)

    q = heads(x @ layer.qkv.q.weight.T + layer.qkv.q.bias)
    k = heads(x @ layer.qkv.k.weight.T + layer.qkv.k.bias)
    v = heads(x @ layer.qkv.v.weight.T + layer.qkv.v.bias)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(HD), dim=-1)
    a = (weights @ v).transpose(1, 2).reshape(b, n, D)
    h = h + a @ layer.out.weight.T + layer.out.bias
    ln2 = torch.nn.LayerNorm(D, eps=layer.norm2.eps)
    ln2.load_state_dict({"weight": layer.norm2.weight, "bias": layer.norm2.bias})
    y = ln2(h) @ layer.mlp.fc1.weight.T + layer.mlp.fc1.bias
    y = F.gelu(y, approximate="tanh") @ layer.mlp.fc2.weight.T + layer.mlp.fc2.bias
    return h + y


@torch.no_grad()
def test_layer_forward_matches_reference() -> None:
    layer = make_layer()
    h = torch.randn(2, 10, D, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(
        layer_forward(layer, h), reference_layer(layer, h), atol=1e-5, rtol=0
    )


@torch.no_grad()
def test_pieces_on_a_subset_of_rows_equal_the_full_layer_rows() -> None:
    """The cacher's partial recompute: q/k/v, attention and MLP for some rows only."""
    layer = make_layer(2)
    h = torch.randn(1, 12, D, generator=torch.Generator().manual_seed(3))
    rows = torch.tensor([0, 5, 6, 11])
    full = project_qkv(layer, h)
    sub = project_qkv(layer, h[:, rows])
    torch.testing.assert_close(sub.k, full.k[:, :, rows])
    torch.testing.assert_close(sub.v, full.v[:, :, rows])
    after_attn = h[:, rows] + project_out(layer, attend(layer, sub.q, full.k, full.v))
    out_rows = after_attn + mlp_branch(layer, after_attn)
    torch.testing.assert_close(out_rows, layer_forward(layer, h)[:, rows], atol=1e-6, rtol=0)


@torch.no_grad()
def test_encoder_forward_keeps_the_requested_hidden_states() -> None:
    layers = [make_layer(s) for s in range(3)]
    h0 = torch.randn(1, 6, D, generator=torch.Generator().manual_seed(4))
    out = encoder_forward(layers, h0, keep=(0, 2, -1))
    assert out.keep == (0, 2, 3)
    h1 = layer_forward(layers[0], h0)
    h2 = layer_forward(layers[1], h1)
    h3 = layer_forward(layers[2], h2)
    assert out.hidden_states[0] is h0
    torch.testing.assert_close(out.hidden_states[1], h2, atol=0, rtol=0)
    torch.testing.assert_close(out.hidden_states[2], h3, atol=0, rtol=0)
    torch.testing.assert_close(out.last, h3, atol=0, rtol=0)
    with pytest.raises(LayerSpecError, match="out of range"):
        encoder_forward(layers, h0, keep=(4,))


@torch.no_grad()
def test_fused_qkv_equals_separate_projections() -> None:
    layer = make_layer(5)
    assert isinstance(layer.qkv, SeparateQKV)
    parts = (layer.qkv.q, layer.qkv.k, layer.qkv.v)
    fused = Linear(torch.cat([p.weight for p in parts]), torch.cat([p.bias for p in parts]))  # type: ignore[misc]
    other = EncoderLayer(
        layer.norm1, FusedQKV(fused), layer.out, layer.norm2, layer.mlp, HEADS, HD, layer.scale
    )
    h = torch.randn(1, 7, D, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(layer_forward(other, h), layer_forward(layer, h), atol=1e-6, rtol=0)


@torch.no_grad()
def test_rms_norm_and_gated_mlp() -> None:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(3, D, generator=gen)
    rms = RMSNorm(1 + torch.randn(D, generator=gen) * 0.1, 1e-6)
    expected = F.rms_norm(x, (D,), rms.weight, eps=1e-6)
    torch.testing.assert_close(norm(rms, x), expected, atol=1e-6, rtol=0)
    gate, up, down = _lin(gen, FF, D), _lin(gen, FF, D), _lin(gen, D, FF)
    layer = EncoderLayer(
        rms,
        FusedQKV(_lin(gen, 3 * D, D)),
        _lin(gen, D, D),
        rms,
        GatedMLP(gate, up, down, "silu"),
        HEADS,
        HD,
        HD**-0.5,
    )
    y = norm(rms, x)
    want = F.linear(
        F.silu(F.linear(y, gate.weight, gate.bias)) * F.linear(y, up.weight, up.bias),
        down.weight,
        down.bias,
    )
    torch.testing.assert_close(mlp_branch(layer, x), want, atol=1e-6, rtol=0)


def test_rotary_is_relative_and_rows_select_angles() -> None:
    """With RoPE angles, q.k depends only on the position difference."""
    gen = torch.Generator().manual_seed(8)
    inv = 1.0 / (10000 ** (torch.arange(0, HD, 2).float() / HD))

    def angles(pos: torch.Tensor) -> Rotary:
        freqs = torch.cat([pos[:, None] * inv, pos[:, None] * inv], dim=-1)
        return Rotary(freqs.cos(), freqs.sin())

    q = torch.randn(1, 1, 1, HD, generator=gen)
    k = torch.randn(1, 1, 1, HD, generator=gen)
    a = (
        apply_rotary(q, angles(torch.tensor([5.0])))
        @ apply_rotary(k, angles(torch.tensor([2.0]))).mT
    )
    b = (
        apply_rotary(q, angles(torch.tensor([13.0])))
        @ apply_rotary(k, angles(torch.tensor([10.0]))).mT
    )
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(apply_rotary(q, angles(torch.tensor([0.0]))), q)
    table = angles(torch.arange(6.0))
    torch.testing.assert_close(table.rows(torch.tensor([4])).cos, angles(torch.tensor([4.0])).cos)


@torch.no_grad()
def test_segment_mask_equals_attention_per_segment() -> None:
    layer = make_layer(9)
    h = torch.randn(1, 9, D, generator=torch.Generator().manual_seed(10))
    qkv = project_qkv(layer, h)
    masked = attend(layer, qkv.q, qkv.k, qkv.v, segment_mask([4, 5]))
    first = attend(layer, qkv.q[:, :, :4], qkv.k[:, :, :4], qkv.v[:, :, :4])
    second = attend(layer, qkv.q[:, :, 4:], qkv.k[:, :, 4:], qkv.v[:, :, 4:])
    torch.testing.assert_close(masked, torch.cat([first, second], dim=1), atol=1e-6, rtol=0)


def test_embed_patches_equals_unfold_matmul() -> None:
    gen = torch.Generator().manual_seed(11)
    p, c = 4, 3
    params = PatchEmbedding(
        weight=torch.randn(D, c, p, p, generator=gen),
        bias=torch.randn(D, generator=gen),
        position=torch.randn(6, D, generator=gen),
    )
    pixels = torch.randn(2, c, 8, 12, generator=gen)
    cols = F.unfold(pixels, p, stride=p).transpose(1, 2)  # (B, N, C*P*P), raster order
    want = cols @ params.weight.reshape(D, -1).T + params.bias + params.position
    torch.testing.assert_close(embed_patches(params, pixels), want, atol=1e-4, rtol=1e-5)
    with pytest.raises(LayerSpecError, match="position embeddings"):
        embed_patches(params, torch.randn(1, c, 8, 8))


def test_records_are_validated() -> None:
    layer = make_layer()
    with pytest.raises(LayerSpecError, match="heads"):
        EncoderLayer(layer.norm1, layer.qkv, layer.out, layer.norm2, layer.mlp, 3, HD, 1.0)
    with pytest.raises(LayerSpecError, match="unknown activation"):
        make_layer(act="no_such_act")


def test_activations_match_their_definitions() -> None:
    x = torch.linspace(-4, 4, 101)
    torch.testing.assert_close(activation("quick_gelu")(x), x * torch.sigmoid(1.702 * x))
    torch.testing.assert_close(
        activation("gelu_new")(x), F.gelu(x, approximate="tanh"), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(activation("silu")(x), x * torch.sigmoid(x))


@torch.no_grad()
def test_group_mask_equals_attention_within_scattered_groups() -> None:
    """Groups need not be contiguous: attention per group, gathered back to token order."""
    from cacher.layers import group_mask

    layer = make_layer(12)
    h = torch.randn(1, 8, D, generator=torch.Generator().manual_seed(13))
    groups = torch.tensor([0, 1, 0, 2, 1, 0, 2, 2])
    qkv = project_qkv(layer, h)
    masked = attend(layer, qkv.q, qkv.k, qkv.v, group_mask(groups))
    for g in range(3):
        idx = (groups == g).nonzero().flatten()
        alone = attend(layer, qkv.q[:, :, idx], qkv.k[:, :, idx], qkv.v[:, :, idx])
        torch.testing.assert_close(masked[:, idx], alone, atol=1e-6, rtol=0)
    contiguous = torch.repeat_interleave(torch.arange(2), torch.tensor([3, 5]))
    assert torch.equal(group_mask(contiguous), segment_mask([3, 5]))
    with pytest.raises(LayerSpecError, match="one-dimensional"):
        group_mask(groups[None])


@torch.no_grad()
def test_encoder_forward_masks_gives_each_layer_its_own_mask() -> None:
    from cacher.layers import encoder_forward_masks

    layers = [make_layer(s) for s in range(3)]
    h0 = torch.randn(1, 6, D, generator=torch.Generator().manual_seed(14))
    window = segment_mask([2, 4])
    out = encoder_forward_masks(layers, h0, masks=(window, None, window), keep=(0, 2, -1))
    h1 = layer_forward(layers[0], h0, mask=window)
    h2 = layer_forward(layers[1], h1)
    h3 = layer_forward(layers[2], h2, mask=window)
    assert out.keep == (0, 2, 3) and out.hidden_states[0] is h0
    torch.testing.assert_close(out.hidden_states[1], h2, atol=0, rtol=0)
    torch.testing.assert_close(out.last, h3, atol=0, rtol=0)
    same = encoder_forward_masks(layers, h0, masks=(None,) * 3, keep=(-1,))
    torch.testing.assert_close(same.last, encoder_forward(layers, h0).last, atol=0, rtol=0)
    assert (out.last - same.last).abs().max() > 1e-3  # the masks matter
    with pytest.raises(LayerSpecError, match="2 attention masks for 3 layers"):
        encoder_forward_masks(layers, h0, masks=(None, None))
    with pytest.raises(LayerSpecError, match="out of range"):
        encoder_forward_masks(layers, h0, masks=(None,) * 3, keep=(5,))


@torch.no_grad()
def test_partial_projections_equal_project_qkv() -> None:
    """project_keys / project_queries_values give project_qkv's parts, separate or fused."""
    from cacher.layers import project_keys, project_queries_values

    layer = make_layer(12)
    assert isinstance(layer.qkv, SeparateQKV)
    parts = (layer.qkv.q, layer.qkv.k, layer.qkv.v)
    fused = EncoderLayer(
        layer.norm1,
        FusedQKV(Linear(torch.cat([p.weight for p in parts]), torch.cat([p.bias for p in parts]))),  # type: ignore[misc]
        layer.out,
        layer.norm2,
        layer.mlp,
        HEADS,
        HD,
        layer.scale,
    )
    gen = torch.Generator().manual_seed(13)
    h = torch.randn(1, 5, D, generator=gen)
    angles = torch.randn(5, HD, generator=gen)
    for rotary in (None, Rotary(angles.cos(), angles.sin())):
        for record in (layer, fused):
            full = project_qkv(record, h, rotary)
            q, v = project_queries_values(record, h, rotary)
            torch.testing.assert_close(project_keys(record, h, rotary), full.k, atol=1e-6, rtol=0)
            torch.testing.assert_close(q, full.q, atol=1e-6, rtol=0)
            torch.testing.assert_close(v, full.v, atol=1e-6, rtol=0)
