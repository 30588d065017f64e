"""Dynamic int8 versions of an encoder's layer records, for CPU inference.

:func:`quantize_layers` returns the same layers with every projection (q/k/v, out, MLP) as a
:class:`cacher.layers.QuantizedLinear`: the weight symmetric int8 with one scale per output row,
prepared for the backend's int8 GEMM (``torch.ops.quantized.linear_prepack`` /
``linear_dynamic``: fbgemm on x86, which quantizes each call's input per tensor on the fly, with
``reduce_range`` as fbgemm needs on AVX2). Norms and the patch embedding stay in float: they are
cheap and sensitive. Every function of :mod:`cacher.layers` -- and so the cacher's partial
recompute -- runs unchanged on such records, because it reaches the weights only through
:func:`cacher.layers.linear`.

This is the kernel ``torch.ao.quantization.quantize_dynamic`` uses, without its module swap (our
encoder runs from records, not modules). torch 2.13 marks ``torch.ao.quantization`` and quantized
tensor creation as deprecated in favour of torchao; the packed int8 ops are what still runs here
(torchao's CPU int8 paths were not adopted: see ``stream_agent/models/quantize.py``). The warning
that creating the quantized weight raises is silenced here, once per weight, on purpose.

CPU only: on a GPU use half precision instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from cacher.errors import EncoderError
from cacher.layers import (
    MLP,
    AnyLinear,
    EncoderLayer,
    FusedQKV,
    GatedMLP,
    Linear,
    QuantizedLinear,
    SeparateQKV,
)


def int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 of ``weight`` ``(out, in)`` with one float32 scale per output row."""
    w = weight.detach().to(torch.float32)
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def pack_int8(weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> Any:
    """``weight`` int8 ``(out, in)`` with per-row ``scale`` prepared for ``linear_dynamic``."""
    zero = torch.zeros(weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # quantized tensor creation is deprecated
        qweight = torch._make_per_channel_quantized_tensor(weight, scale.double(), zero, 0)
    b = None if bias is None else bias.detach().to(torch.float32)
    return torch.ops.quantized.linear_prepack(qweight, b)


def quantize_linear(params: AnyLinear) -> QuantizedLinear:
    """``params`` as an int8 projection (a :class:`QuantizedLinear` is returned as it is)."""
    if isinstance(params, QuantizedLinear):
        return params
    if params.weight.device.type != "cpu":
        raise EncoderError(
            f"int8 projections run on the CPU only; this encoder is on {params.weight.device} "
            "(use half precision on a GPU)"
        )
    q, scale = int8_rows(params.weight)
    bias = None if params.bias is None else params.bias.detach().to(torch.float32)
    return QuantizedLinear(q, scale, bias, pack_int8(q, scale, bias))


def _fused(params: AnyLinear, width: int) -> QuantizedLinear:
    full = quantize_linear(params)
    thirds = []
    for which in range(3):
        rows = slice(which * width, (which + 1) * width)
        bias = None if full.bias is None else full.bias[rows]
        weight, scale = full.weight[rows].contiguous(), full.scale[rows].contiguous()
        thirds.append(QuantizedLinear(weight, scale, bias, pack_int8(weight, scale, bias)))
    return replace(full, thirds=(thirds[0], thirds[1], thirds[2]))


def quantize_layer(layer: EncoderLayer) -> EncoderLayer:
    """``layer`` with its projections in int8 (norms unchanged; see the module docstring)."""
    if layer.norm1.weight.dtype != torch.float32:
        raise EncoderError(
            f"int8 projections take a float32 encoder, this one is {layer.norm1.weight.dtype}"
        )
    qkv: SeparateQKV | FusedQKV
    if isinstance(layer.qkv, FusedQKV):
        qkv = FusedQKV(_fused(layer.qkv.qkv, layer.num_heads * layer.head_dim))
    else:
        qkv = SeparateQKV(
            quantize_linear(layer.qkv.q), quantize_linear(layer.qkv.k), quantize_linear(layer.qkv.v)
        )
    mlp: MLP | GatedMLP
    if isinstance(layer.mlp, GatedMLP):
        mlp = GatedMLP(
            quantize_linear(layer.mlp.gate),
            quantize_linear(layer.mlp.up),
            quantize_linear(layer.mlp.down),
            layer.mlp.activation,
        )
    else:
        mlp = MLP(
            quantize_linear(layer.mlp.fc1), quantize_linear(layer.mlp.fc2), layer.mlp.activation
        )
    return replace(layer, qkv=qkv, out=quantize_linear(layer.out), mlp=mlp)


def quantize_layers(layers: Sequence[EncoderLayer]) -> tuple[EncoderLayer, ...]:
    """Every layer through :func:`quantize_layer`."""
    return tuple(quantize_layer(layer) for layer in layers)


def is_quantized(layer: EncoderLayer) -> bool:
    """Whether ``layer``'s output projection is int8 (all its projections are, when built here)."""
    return isinstance(layer.out, QuantizedLinear)


def float_linear(params: AnyLinear) -> Linear:
    """A float32 :class:`Linear` equal to the dequantized ``params`` (for comparisons)."""
    if isinstance(params, Linear):
        return params
    return Linear(params.weight.to(torch.float32) * params.scale[:, None], params.bias)
