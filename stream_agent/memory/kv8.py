"""An 8-bit codec for KV blocks on disk: symmetric int8 with per-channel scales.

A block's keys or values for one layer are ``(kv_heads, tokens, head_dim)``. Keys have a few
channels (``head_dim`` positions of a head) with large magnitudes, the same across tokens (the
outlier channels KIVI and KVQuant describe), so one scale per token would waste the 8 bits of
every other channel on them; one scale per *channel* -- per ``(kv_head, dim)``, shared by the
block's tokens -- keeps each channel's own range::

    scale[h, d] = max_t |x[h, t, d]| / 127         (stored as float16; 0 -> 1)
    q[h, t, d]  = round(x[h, t, d] / scale[h, d])   in [-127, 127]
    x'[h, t, d] = q[h, t, d] * scale[h, d]          so |x - x'| <= scale[h, d] / 2

``axis="token"`` (one scale per ``(kv_head, token)``, the KIVI choice for values) is offered for
values; per-channel is the default for both, as the issue asks. The scale is rounded to float16
(up) *before* quantising, so the bound above holds for the stored scale; it is within 0.05 % of
``max|x| / 127`` while that is a normal float16 (over 6e-5; keys and values are far larger).

One layer of one block packs to ``[q_keys | q_values | key_scales | value_scales]``
(:func:`pack_layer` / :func:`unpack_layer`), a fixed length for a token count
(:func:`layer_nbytes`), so the block store can keep reading one layer with one ``pread``: Qwen2-0.5B
(2 KV heads x 64) at 64 tokens a frame is 16 KiB + 0.5 KiB of scales per layer instead of 32 KiB
in float16.

:func:`first_token_kl` measures what the codec costs the model: the KL divergence of the
next-token distribution after a cache round-tripped through the codec from the one after the
original cache. Pure torch: no transformers here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal, get_args

import torch

from stream_agent.memory.errors import MemoryConfigError

Axis = Literal["channel", "token"]
AXES: Final[tuple[str, ...]] = get_args(Axis)
QMAX: Final[int] = 127
SCALE_DTYPE: Final[torch.dtype] = torch.float16
_SCALE_MIN: Final[float] = 2.0**-24  # float16's smallest subnormal
_SCALE_MAX: Final[float] = 65504.0  # float16's largest finite


@dataclass(frozen=True, slots=True, eq=False)
class Quantized:
    """``data`` int8 of the input's shape and ``scale`` float16: ``(..., 1, D)`` per channel,
    ``(..., T, 1)`` per token."""

    data: torch.Tensor
    scale: torch.Tensor
    axis: Axis

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``data * scale`` in ``dtype`` (computed in float32)."""
        return (self.data.to(torch.float32) * self.scale.to(torch.float32)).to(dtype)

    @property
    def nbytes(self) -> int:
        return self.data.numel() + self.scale.numel() * self.scale.element_size()


def _check_axis(axis: str) -> None:
    if axis not in AXES:
        raise MemoryConfigError(f"an 8-bit KV axis must be one of {', '.join(AXES)}; got {axis!r}")


def quantize(x: torch.Tensor, axis: Axis = "channel") -> Quantized:
    """Symmetric int8 of ``x`` ``(..., tokens, dim)`` with one scale per channel (shared by the
    tokens) or per token (shared by the channels). Non-finite values are refused."""
    _check_axis(axis)
    if not x.is_floating_point() or x.ndim < 2:
        raise ValueError(
            f"8-bit KV takes floating-point (..., tokens, dim), got {x.dtype} {x.shape}"
        )
    x32 = x.to(torch.float32)
    if not bool(torch.isfinite(x32).all()):
        raise ValueError("8-bit KV cannot encode NaN or infinite keys/values")
    reduce = -2 if axis == "channel" else -1
    if x32.shape[reduce] == 0:
        shape = list(x32.shape)
        shape[reduce] = 1
        scale = torch.ones(shape, dtype=SCALE_DTYPE, device=x.device)
        return Quantized(torch.zeros_like(x32, dtype=torch.int8), scale, axis)
    amax = x32.abs().amax(dim=reduce, keepdim=True)
    scale32 = (amax / QMAX).clamp(_SCALE_MIN, _SCALE_MAX)
    scale32 = torch.where(amax > 0, scale32, torch.ones_like(scale32))
    scale = scale32.to(SCALE_DTYPE)
    # round the stored scale up, never down: a smaller one would push max|x| past 127 (clamped)
    low = scale.to(torch.float32) < scale32
    if bool(low.any()):
        scale = torch.where(low, torch.nextafter(scale, torch.full_like(scale, math.inf)), scale)
    q = torch.round(x32 / scale.to(torch.float32)).clamp_(-QMAX, QMAX).to(torch.int8)
    return Quantized(q, scale, axis)


def roundtrip(x: torch.Tensor, axis: Axis = "channel") -> torch.Tensor:
    """``x`` through the codec and back, in ``x``'s dtype (what a block read from disk holds)."""
    return quantize(x, axis).dequantize(x.dtype)


# ---------------------------------------------------------------------------------- layer slices


def _scale_elements(kv_heads: int, tokens: int, head_dim: int, axis: Axis) -> int:
    return kv_heads * (head_dim if axis == "channel" else tokens)


def layer_nbytes(
    kv_heads: int,
    tokens: int,
    head_dim: int,
    *,
    key_axis: Axis = "channel",
    value_axis: Axis = "channel",
) -> int:
    """Bytes of one packed layer slice of a block of ``tokens`` tokens."""
    _check_axis(key_axis)
    _check_axis(value_axis)
    data = 2 * kv_heads * tokens * head_dim
    scales = _scale_elements(kv_heads, tokens, head_dim, key_axis) + _scale_elements(
        kv_heads, tokens, head_dim, value_axis
    )
    return data + scales * torch.empty((), dtype=SCALE_DTYPE).element_size()


def pack_layer(
    keys: torch.Tensor,
    values: torch.Tensor,
    *,
    key_axis: Axis = "channel",
    value_axis: Axis = "channel",
) -> bytes:
    """One layer's ``keys``/``values`` ``(kv_heads, tokens, head_dim)`` as
    ``[q_keys | q_values | key_scales | value_scales]`` (int8, int8, float16, float16)."""
    if keys.shape != values.shape or keys.ndim != 3:
        raise ValueError(
            f"keys {tuple(keys.shape)} and values {tuple(values.shape)} must both be "
            "(kv_heads, tokens, head_dim)"
        )
    qk, qv = quantize(keys, key_axis), quantize(values, value_axis)
    parts = (qk.data, qv.data, qk.scale, qv.scale)
    return b"".join(
        p.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes() for p in parts
    )


def unpack_layer(
    data: bytes | bytearray | memoryview,
    kv_heads: int,
    tokens: int,
    head_dim: int,
    *,
    key_axis: Axis = "channel",
    value_axis: Axis = "channel",
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values ``(kv_heads, tokens, head_dim)`` in ``dtype`` from a :func:`pack_layer`
    slice; raises ``ValueError`` when the length does not match."""
    expected = layer_nbytes(kv_heads, tokens, head_dim, key_axis=key_axis, value_axis=value_axis)
    if len(data) != expected:
        raise ValueError(f"an 8-bit KV layer slice of {len(data)} bytes, expected {expected}")
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8) if expected else torch.empty(0)
    n = kv_heads * tokens * head_dim
    at = 0

    def take(count: int, kind: torch.dtype) -> torch.Tensor:
        nonlocal at
        size = count * torch.empty((), dtype=kind).element_size()
        part = raw[at : at + size].view(kind)
        at += size
        return part

    qk = take(n, torch.int8).view(kv_heads, tokens, head_dim)
    qv = take(n, torch.int8).view(kv_heads, tokens, head_dim)
    out = []
    for q, axis in ((qk, key_axis), (qv, value_axis)):
        shape = (kv_heads, 1, head_dim) if axis == "channel" else (kv_heads, tokens, 1)
        scale = take(math.prod(shape), SCALE_DTYPE).view(shape)
        out.append(Quantized(q, scale, axis).dequantize(dtype))
    return out[0], out[1]


# ------------------------------------------------------------------------------------ fidelity


def first_token_kl(reference_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """``KL(p_ref || p)`` in nats of the next-token distributions given by two logit vectors
    ``(vocab,)`` (float64 maths): 0 when the codec changes nothing the model would say next."""
    if reference_logits.shape != logits.shape:
        raise ValueError(
            f"logits of shape {tuple(reference_logits.shape)} and {tuple(logits.shape)} differ"
        )
    ref = torch.log_softmax(reference_logits.to(torch.float64), dim=-1)
    got = torch.log_softmax(logits.to(torch.float64), dim=-1)
    return float((ref.exp() * (ref - got)).sum(dim=-1).mean().item())
