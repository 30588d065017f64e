"""Pre-LN transformer encoder layers as plain tensors, and the maths that runs them piece by piece.

A vision tower (SigLIP in LLaVA-OneVision, the ViT of Qwen2-VL, ...) is a patch embedding followed
by pre-LN encoder layers::

    h = h + out(attention(qkv(norm1(h))))
    h = h + mlp(norm2(h))

The records below hold one layer's weights (references to the model's own tensors, never copies)
and nothing else: no framework objects, so this package needs only torch. The functions are split
at the points where a token-reuse cache (STC-Cacher) needs to cut the maths:

(a) :func:`project_qkv` -- norm1 and the q/k/v projections for any subset of token rows;
(b) :func:`attend` -- attention of some query rows over full (possibly partly cached) K/V;
(c) :func:`project_out` -- the attention output projection (the attention branch);
(d) :func:`mlp_branch` -- norm2 and the MLP for any subset of rows;
(e) :func:`layer_forward` / :func:`encoder_forward` -- a whole layer and a whole encoder, built only
    from (a)-(d), so a partial recompute that calls the same pieces does exactly the same maths.

Families differ only in which variant of each part a layer uses: the norms (:class:`LayerNorm` or
:class:`RMSNorm`), the projections (:class:`SeparateQKV` or :class:`FusedQKV`), the MLP
(:class:`MLP` or :class:`GatedMLP`), and optional per-row :class:`Rotary` angles and an attention
mask (Qwen2-VL's 2-D rotary and per-temporal-patch segments, see :func:`segment_mask`).

Shapes: hidden states are ``(B, N, D)``; per-head tensors are ``(B, H, N, head_dim)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


class LayerSpecError(ValueError):
    """A layer record is inconsistent (shapes, head count) or names an unknown activation."""


def _gelu_tanh_python(x: Tensor) -> Tensor:
    return (
        0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
    )


def _quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(1.702 * x)


def _gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


#: Activation functions by the names model configs use (``hidden_act``).
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_new": _gelu_tanh_python,
    "gelu_python_tanh": _gelu_tanh_python,
    "quick_gelu": _quick_gelu,
    "silu": F.silu,
    "swish": F.silu,
    "relu": F.relu,
}


def activation(name: str) -> Callable[[Tensor], Tensor]:
    """The activation function called ``name`` (raises :class:`LayerSpecError` if unknown)."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        known = ", ".join(sorted(ACTIVATIONS))
        raise LayerSpecError(f"unknown activation {name!r}; known: {known}") from None


# --------------------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True, eq=False)
class Linear:
    """``y = x @ weight.T + bias``; ``weight`` is ``(out, in)``."""

    weight: Tensor
    bias: Tensor | None = None

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])


@dataclass(frozen=True, slots=True, eq=False)
class QuantizedLinear:
    """``y ~ x @ weight.T + bias`` with an int8 weight and dynamic int8 activations (CPU).

    ``weight`` is the int8 ``(out, in)`` matrix, ``scale`` its float32 per-output-row scales
    (``weight_fp32 ~ weight * scale[:, None]``), ``packed`` the same weight prepared for the
    backend's int8 GEMM (fbgemm/onednn ``linear_dynamic``, which also quantizes each call's input
    per tensor). ``thirds``: for a fused q/k/v projection, its q, k and v rows prepared on their
    own (``paper`` mode projects only the keys of every token). Built by
    :func:`cacher.quantized.quantize_linear`; see that module.
    """

    weight: Tensor
    scale: Tensor
    bias: Tensor | None
    packed: Any
    thirds: tuple[QuantizedLinear, QuantizedLinear, QuantizedLinear] | None = None

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])


AnyLinear = Linear | QuantizedLinear


@dataclass(frozen=True, slots=True, eq=False)
class LayerNorm:
    """Layer normalisation over the last dimension."""

    weight: Tensor
    bias: Tensor | None
    eps: float


@dataclass(frozen=True, slots=True, eq=False)
class RMSNorm:
    """Root-mean-square normalisation over the last dimension, computed in float32."""

    weight: Tensor
    eps: float


Norm = LayerNorm | RMSNorm


@dataclass(frozen=True, slots=True, eq=False)
class SeparateQKV:
    """Three projections (SigLIP, CLIP)."""

    q: AnyLinear
    k: AnyLinear
    v: AnyLinear


@dataclass(frozen=True, slots=True, eq=False)
class FusedQKV:
    """One projection whose output rows are ``[q; k; v]`` (Qwen2-VL's ``attn.qkv``)."""

    qkv: AnyLinear


QKVProjection = SeparateQKV | FusedQKV


@dataclass(frozen=True, slots=True, eq=False)
class MLP:
    """``fc2(act(fc1(x)))``."""

    fc1: AnyLinear
    fc2: AnyLinear
    activation: str


@dataclass(frozen=True, slots=True, eq=False)
class GatedMLP:
    """``down(act(gate(x)) * up(x))`` (Qwen2.5-VL's vision MLP)."""

    gate: AnyLinear
    up: AnyLinear
    down: AnyLinear
    activation: str


MLPBlock = MLP | GatedMLP


@dataclass(frozen=True, slots=True, eq=False)
class EncoderLayer:
    """The weights of one pre-LN encoder layer, plus its head layout.

    ``scale`` multiplies ``q @ k.T`` (usually ``head_dim ** -0.5``).
    """

    norm1: Norm
    qkv: QKVProjection
    out: AnyLinear
    norm2: Norm
    mlp: MLPBlock
    num_heads: int
    head_dim: int
    scale: float

    def __post_init__(self) -> None:
        width = self.num_heads * self.head_dim
        if self.out.in_features != width:
            raise LayerSpecError(
                f"out projection takes {self.out.in_features} features, but "
                f"{self.num_heads} heads x {self.head_dim} = {width}"
            )
        projected = (
            self.qkv.qkv.out_features
            if isinstance(self.qkv, FusedQKV)
            else self.qkv.q.out_features + self.qkv.k.out_features + self.qkv.v.out_features
        )
        if projected != 3 * width:
            raise LayerSpecError(
                f"q/k/v projections give {projected} features, expected {3 * width}"
            )
        activation(self.mlp.activation)  # fail early on an unknown name

    @property
    def hidden_size(self) -> int:
        return self.out.out_features


@dataclass(frozen=True, slots=True, eq=False)
class PatchEmbedding:
    """A non-overlapping patch convolution plus (optional) learned absolute position embeddings.

    ``weight`` is ``(D, C, P, P)``; ``position`` is ``(N, D)`` for ``N`` patches in raster order.
    """

    weight: Tensor
    bias: Tensor | None
    position: Tensor | None

    @property
    def patch_size(self) -> int:
        return int(self.weight.shape[-1])


@dataclass(frozen=True, slots=True, eq=False)
class Rotary:
    """Rotary angles for a set of token rows: ``cos``/``sin`` of shape ``(n, head_dim)``.

    Applied to q and k as ``x * cos + rotate_half(x) * sin`` in float32 (the half-split
    convention of Qwen2-VL's vision tower). :meth:`rows` selects the angles of a subset of tokens,
    which stay valid for reuse because a token's angles depend only on its grid position.
    """

    cos: Tensor
    sin: Tensor

    def rows(self, index: Tensor) -> Rotary:
        return Rotary(self.cos[index], self.sin[index])


@dataclass(frozen=True, slots=True, eq=False)
class QKV:
    """Per-head queries, keys and values, each ``(B, H, n, head_dim)``."""

    q: Tensor
    k: Tensor
    v: Tensor


@dataclass(frozen=True, slots=True, eq=False)
class EncoderOutput:
    """Result of :func:`encoder_forward`.

    ``hidden_states[i]`` is the hidden state with index ``keep[i]``, where index 0 is the encoder
    input and index ``j`` the output of layer ``j`` (1-based), the convention of transformers'
    ``output_hidden_states``.
    """

    last: Tensor
    keep: tuple[int, ...]
    hidden_states: tuple[Tensor, ...]


# ------------------------------------------------------------------------------------- functions


def linear(params: AnyLinear, x: Tensor) -> Tensor:
    if isinstance(params, QuantizedLinear):
        rows = x.contiguous()
        flat = rows.ndim == 1  # the kernel takes (..., in) with at least one row dimension
        out: Tensor = torch.ops.quantized.linear_dynamic(
            rows[None] if flat else rows, params.packed, True
        )
        return out[0] if flat else out
    return F.linear(x, params.weight, params.bias)


def norm(params: Norm, x: Tensor) -> Tensor:
    """Apply a :class:`LayerNorm` or :class:`RMSNorm` over the last dimension."""
    if isinstance(params, LayerNorm):
        return F.layer_norm(x, params.weight.shape, params.weight, params.bias, params.eps)
    dtype = x.dtype
    x32 = x.to(torch.float32)
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + params.eps)
    return params.weight * x32.to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: Tensor, rotary: Rotary) -> Tensor:
    """Rotate per-head rows ``x`` ``(B, H, n, hd)`` by ``rotary`` (``(n, hd)``), in float32."""
    dtype = x.dtype
    x32 = x.to(torch.float32)
    cos = rotary.cos.to(torch.float32)
    sin = rotary.sin.to(torch.float32)
    return (x32 * cos + rotate_half(x32) * sin).to(dtype)


def _split_heads(x: Tensor, num_heads: int, head_dim: int) -> Tensor:
    return x.view(*x.shape[:-1], num_heads, head_dim).transpose(-3, -2)


def project_qkv(layer: EncoderLayer, rows: Tensor, rotary: Rotary | None = None) -> QKV:
    """(a) norm1 and the q/k/v projections of hidden-state ``rows`` ``(B, n, D)``.

    With ``rotary`` (angles of exactly these rows), q and k are rotated.
    """
    x = norm(layer.norm1, rows)
    if isinstance(layer.qkv, FusedQKV):
        q, k, v = linear(layer.qkv.qkv, x).chunk(3, dim=-1)
    else:
        q, k, v = linear(layer.qkv.q, x), linear(layer.qkv.k, x), linear(layer.qkv.v, x)
    q = _split_heads(q, layer.num_heads, layer.head_dim)
    k = _split_heads(k, layer.num_heads, layer.head_dim)
    v = _split_heads(v, layer.num_heads, layer.head_dim)
    if rotary is not None:
        q, k = apply_rotary(q, rotary), apply_rotary(k, rotary)
    return QKV(q, k, v)


def attend(
    layer: EncoderLayer, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None
) -> Tensor:
    """(b) Attention of query rows ``q`` ``(B, H, n, hd)`` over all keys/values ``(B, H, N, hd)``.

    ``mask`` (boolean, True = may attend, broadcastable to ``(B, H, n, N)``) restricts which keys
    each query row sees. Returns the merged heads ``(B, n, H*hd)``, before the out projection.
    """
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=layer.scale)
    out = out.transpose(-3, -2)
    return out.reshape(*out.shape[:-2], layer.num_heads * layer.head_dim)


def project_out(layer: EncoderLayer, attended: Tensor) -> Tensor:
    """(c) The attention output projection: the attention branch added to the residual."""
    return linear(layer.out, attended)


def mlp_branch(layer: EncoderLayer, rows: Tensor) -> Tensor:
    """(d) norm2 and the MLP of hidden-state ``rows``: the MLP branch added to the residual."""
    x = norm(layer.norm2, rows)
    mlp = layer.mlp
    act = activation(mlp.activation)
    if isinstance(mlp, GatedMLP):
        return linear(mlp.down, act(linear(mlp.gate, x)) * linear(mlp.up, x))
    return linear(mlp.fc2, act(linear(mlp.fc1, x)))


def layer_forward(
    layer: EncoderLayer,
    hidden: Tensor,
    *,
    rotary: Rotary | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """(e) One whole layer over all tokens of ``hidden`` ``(B, N, D)``."""
    qkv = project_qkv(layer, hidden, rotary)
    hidden = hidden + project_out(layer, attend(layer, qkv.q, qkv.k, qkv.v, mask))
    return hidden + mlp_branch(layer, hidden)


def encoder_forward(
    layers: Sequence[EncoderLayer],
    hidden: Tensor,
    *,
    keep: Sequence[int] = (),
    rotary: Rotary | None = None,
    mask: Tensor | None = None,
) -> EncoderOutput:
    """(e) Run ``layers`` in order over ``hidden`` and keep the hidden states indexed by ``keep``.

    Index 0 is ``hidden`` itself and index ``j`` the output of layer ``j``; negative indices count
    from the end as in Python (``-1`` is the last layer's output).
    """
    total = len(layers) + 1
    resolved = tuple(i + total if i < 0 else i for i in keep)
    for i, original in zip(resolved, keep, strict=True):
        if not 0 <= i < total:
            raise LayerSpecError(
                f"hidden-state index {original} out of range for {len(layers)} layers"
            )
    kept: dict[int, Tensor] = {}
    if 0 in resolved:
        kept[0] = hidden
    for j, layer in enumerate(layers, start=1):
        hidden = layer_forward(layer, hidden, rotary=rotary, mask=mask)
        if j in resolved:
            kept[j] = hidden
    return EncoderOutput(last=hidden, keep=resolved, hidden_states=tuple(kept[i] for i in resolved))


def embed_patches(params: PatchEmbedding, pixels: Tensor) -> Tensor:
    """Patch embeddings ``(B, N, D)`` of ``pixels`` ``(B, C, H, W)`` in raster order."""
    p = params.patch_size
    x = F.conv2d(pixels.to(params.weight.dtype), params.weight, params.bias, stride=p)
    x = x.flatten(2).transpose(1, 2)
    if params.position is not None:
        if params.position.shape[0] != x.shape[1]:
            raise LayerSpecError(
                f"{x.shape[1]} patches but {params.position.shape[0]} position embeddings; "
                "frames must be resized to the encoder's image size first"
            )
        x = x + params.position
    return x


def segment_mask(lengths: Sequence[int], device: torch.device | str | None = None) -> Tensor:
    """Block-diagonal boolean mask ``(N, N)`` letting tokens attend only within their segment."""
    ids = torch.repeat_interleave(
        torch.arange(len(lengths), device=device), torch.tensor(list(lengths), device=device)
    )
    return ids[:, None] == ids[None, :]


# ------------------------------------------------------------- partial projections (token reuse)


def _projection(layer: EncoderLayer, which: int) -> AnyLinear:
    """The q (0), k (1) or v (2) projection of ``layer``; a row slice of a fused ``qkv``."""
    if isinstance(layer.qkv, SeparateQKV):
        return (layer.qkv.q, layer.qkv.k, layer.qkv.v)[which]
    fused = layer.qkv.qkv
    width = layer.num_heads * layer.head_dim
    rows = slice(which * width, (which + 1) * width)
    if isinstance(fused, QuantizedLinear):
        if fused.thirds is None:
            raise LayerSpecError(
                "a quantized fused q/k/v projection needs its q, k and v rows prepared too; "
                "quantize the layer with cacher.quantized.quantize_layer"
            )
        return fused.thirds[which]
    return Linear(fused.weight[rows], None if fused.bias is None else fused.bias[rows])


def project_keys(layer: EncoderLayer, rows: Tensor, rotary: Rotary | None = None) -> Tensor:
    """(a') norm1 and the k projection only of hidden-state ``rows`` ``(B, n, D)``.

    Equals ``project_qkv(layer, rows, rotary).k`` at a third of the projection cost; STC-Cacher
    needs every token's key to choose which tokens to recompute.
    """
    k = linear(_projection(layer, 1), norm(layer.norm1, rows))
    k = _split_heads(k, layer.num_heads, layer.head_dim)
    return k if rotary is None else apply_rotary(k, rotary)


def project_queries_values(
    layer: EncoderLayer, rows: Tensor, rotary: Rotary | None = None
) -> tuple[Tensor, Tensor]:
    """(a'') norm1 and the q and v projections of hidden-state ``rows`` ``(B, n, D)``.

    Equals ``(qkv.q, qkv.v)`` of :func:`project_qkv` without the k projection (for rows whose key
    is already known).
    """
    x = norm(layer.norm1, rows)
    q = _split_heads(linear(_projection(layer, 0), x), layer.num_heads, layer.head_dim)
    v = _split_heads(linear(_projection(layer, 2), x), layer.num_heads, layer.head_dim)
    return (q if rotary is None else apply_rotary(q, rotary)), v


def group_mask(groups: Tensor) -> Tensor:
    """Boolean mask ``(N, N)`` letting token ``i`` attend to token ``j`` iff they share a group.

    ``groups`` is ``(N,)`` integer group ids in any token order; unlike :func:`segment_mask` the
    members of a group need not be contiguous (Qwen2.5-VL's attention windows over patches kept in
    raster order). Select a subset of query rows with ``mask[rows]``.
    """
    if groups.ndim != 1:
        raise LayerSpecError(f"group ids must be one-dimensional, got shape {tuple(groups.shape)}")
    return groups[:, None] == groups[None, :]


def encoder_forward_masks(
    layers: Sequence[EncoderLayer],
    hidden: Tensor,
    *,
    masks: Sequence[Tensor | None],
    keep: Sequence[int] = (),
    rotary: Rotary | None = None,
) -> EncoderOutput:
    """:func:`encoder_forward` with its own attention mask for each layer.

    ``masks[j]`` is the mask of ``layers[j]`` (``None``: full attention), for encoders whose layers
    attend differently (Qwen2.5-VL: windows in most layers, whole frames in a few).
    """
    if len(masks) != len(layers):
        raise LayerSpecError(f"{len(masks)} attention masks for {len(layers)} layers")
    total = len(layers) + 1
    resolved = tuple(i + total if i < 0 else i for i in keep)
    for i, original in zip(resolved, keep, strict=True):
        if not 0 <= i < total:
            raise LayerSpecError(
                f"hidden-state index {original} out of range for {len(layers)} layers"
            )
    kept: dict[int, Tensor] = {}
    if 0 in resolved:
        kept[0] = hidden
    for j, (layer, mask) in enumerate(zip(layers, masks, strict=True), start=1):
        hidden = layer_forward(layer, hidden, rotary=rotary, mask=mask)
        if j in resolved:
            kept[j] = hidden
    return EncoderOutput(last=hidden, keep=resolved, hidden_states=tuple(kept[i] for i in resolved))
