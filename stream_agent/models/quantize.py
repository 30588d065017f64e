"""Dynamic int8 inference on CPU for a loaded model: the vision tower's and the LLM's Linears.

:func:`quantize_model` changes a loaded adapter in place and says what it changed:

* ``"vision"`` -- the encoder's layer records (:attr:`VideoLLM.vision_layers`, which the cacher
  and :meth:`VideoLLM.encode_pixels` run) become int8 records
  (:func:`cacher.quantized.quantize_layers`): every q/k/v, out and MLP projection int8 with one
  scale per output row, the activations quantized per call (fbgemm's ``linear_dynamic``). The
  library's own vision modules keep their float weights (our pipeline does not call them; the
  projector and the patch embedding stay float, they are cheap and sensitive).
* ``"llm"`` -- every ``nn.Linear`` of the decoder layers and the LM head is replaced by
  :class:`Int8Linear`, a module around the same int8 kernel. The KV memory's layer runner calls
  the decoder layers and their projections as modules, so it runs unchanged; the embedding table
  and the norms stay float.

Why not ``torch.ao.quantization.quantize_dynamic``: torch 2.13 marks ``torch.ao.quantization``
deprecated (to be removed, in favour of torchao), and it cannot reach the vision path, which runs
from records. torchao 0.18 is on the package index, but its CPU int8 path needs
``torch.compile``/inductor for speed and was not adopted. The packed int8 kernel both use is what
runs here; creating its quantized weight raises a deprecation warning that is silenced, once per
weight.

What breaks on a quantized model: code that reads a quantized projection's ``.weight`` as a float
tensor. The vision records' readers go through :func:`cacher.layers.linear`; an
:class:`Int8Linear` has an int8 ``weight`` buffer (its ``float_weight()`` dequantizes).
CPU only: on a GPU half precision is the fast path, and this raises :class:`DeviceError`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Final

import torch

from cacher.quantized import int8_rows, pack_int8, quantize_layers
from stream_agent.models.base import LanguageModel, VideoLLM
from stream_agent.models.errors import DeviceError

log = logging.getLogger(__name__)

PARTS: Final[tuple[str, ...]] = ("vision", "llm")


class Int8Linear(torch.nn.Module):
    """``nn.Linear`` with an int8 weight (per output row scales) and dynamic int8 activations."""

    weight: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.in_features = int(weight.shape[1])
        self.out_features = int(weight.shape[0])
        self.register_buffer("weight", weight)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)
        self._packed = pack_int8(weight, scale, bias)

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear) -> Int8Linear:
        q, scale = int8_rows(linear.weight)
        bias = None if linear.bias is None else linear.bias.detach().to(torch.float32).clone()
        return cls(q, scale, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.to(torch.float32).contiguous()
        flat = rows.ndim == 1  # the kernel takes (..., in) with at least one row dimension
        out: torch.Tensor = torch.ops.quantized.linear_dynamic(
            rows[None] if flat else rows, self._packed, True
        )
        return (out[0] if flat else out).to(x.dtype)

    def float_weight(self) -> torch.Tensor:
        """The dequantized weight ``(out, in)``, float32."""
        return self.weight.to(torch.float32) * self.scale[:, None]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


@dataclass(frozen=True)
class QuantizeReport:
    """What :func:`quantize_model` changed: the parts, the vision layers and LLM projections
    quantized, and the bytes of those weights in float32 and in int8 (with scales)."""

    parts: tuple[str, ...]
    vision_layers: int
    llm_linears: int
    float_bytes: int
    int8_bytes: int


def _check(model: LanguageModel, parts: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(parts))
    unknown = [p for p in chosen if p not in PARTS]
    if unknown or not chosen:
        raise ValueError(
            f"quantize parts must be a non-empty selection of {', '.join(PARTS)}; got {chosen}"
        )
    if model.device.type != "cpu":
        raise DeviceError(
            f"int8 inference runs on the CPU; this model is on {model.device} (use half "
            "precision on a GPU)"
        )
    if model.dtype != torch.float32:
        raise DeviceError(f"int8 inference quantizes a float32 model; this one is {model.dtype}")
    if "vision" in chosen and not isinstance(model, VideoLLM):
        raise ValueError(f"a {type(model).__name__} has no vision tower to quantize")
    return chosen


def _vision(model: VideoLLM) -> tuple[int, int, int]:
    # vision_layers is each adapter's cached_property: the int8 records take its cached value's
    # place on this instance, so that everything that reads the property gets them.
    attr = getattr(type(model), "vision_layers", None)
    if not isinstance(attr, cached_property):
        raise TypeError(
            f"{type(model).__name__}.vision_layers is not a cached property; int8 vision records "
            "cannot replace it"
        )
    layers = model.vision_layers
    quantized = quantize_layers(layers)
    vars(model)["vision_layers"] = quantized
    float_bytes = int8_bytes = 0
    for layer in layers:
        for linear in _linears(layer):
            float_bytes += linear.weight.numel() * linear.weight.element_size()
    for layer in quantized:
        for linear in _linears(layer):
            int8_bytes += linear.weight.numel() + linear.scale.numel() * 4
    return len(quantized), float_bytes, int8_bytes


def _linears(layer: Any) -> list[Any]:
    qkv = layer.qkv
    found = [qkv.qkv] if hasattr(qkv, "qkv") else [qkv.q, qkv.k, qkv.v]
    mlp = layer.mlp
    found += [mlp.gate, mlp.up, mlp.down] if hasattr(mlp, "gate") else [mlp.fc1, mlp.fc2]
    return [*found, layer.out]


def _llm(model: LanguageModel) -> tuple[int, int, int]:
    targets = {id(m) for m in model.decoder.layers.modules() if isinstance(m, torch.nn.Linear)}
    head = model.lm_head
    if isinstance(head, torch.nn.Linear):
        targets.add(id(head))
    count = float_bytes = int8_bytes = 0
    for parent in list(model.model.modules()):
        for name, child in list(parent.named_children()):
            if id(child) not in targets or not isinstance(child, torch.nn.Linear):
                continue
            replacement = Int8Linear.from_linear(child)
            setattr(parent, name, replacement)
            count += 1
            float_bytes += child.weight.numel() * child.weight.element_size()
            int8_bytes += replacement.weight.numel() + replacement.scale.numel() * 4
    return count, float_bytes, int8_bytes


@torch.no_grad()
def quantize_model(
    model: LanguageModel, parts: Iterable[str] = ("vision", "llm")
) -> QuantizeReport:
    """Quantize ``parts`` of ``model`` (a loaded float32 CPU adapter) to int8, in place.

    Raises :class:`DeviceError` for a model not on the CPU or not float32, ``ValueError`` for
    unknown parts (or ``"vision"`` of a text-only model). Idempotent per part.
    """
    chosen = _check(model, parts)
    vision = (0, 0, 0)
    llm = (0, 0, 0)
    if "vision" in chosen:
        assert isinstance(model, VideoLLM)
        vision = _vision(model)
    if "llm" in chosen:
        llm = _llm(model)
    report = QuantizeReport(
        parts=chosen,
        vision_layers=vision[0],
        llm_linears=llm[0],
        float_bytes=vision[1] + llm[1],
        int8_bytes=vision[2] + llm[2],
    )
    log.info(
        "model quantized to int8 (%s): %d vision layers, %d LLM projections, %.1f -> %.1f MB",
        ", ".join(chosen),
        report.vision_layers,
        report.llm_linears,
        report.float_bytes / 1e6,
        report.int8_bytes / 1e6,
    )
    return report
