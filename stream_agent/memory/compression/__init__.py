"""In-context compression methods, one module each, behind
:class:`~.base.InContextCompressor`; chosen by ``MemoryOptions.compression`` through
:data:`COMPRESSORS` (one instance per answer).

``compression`` is a method name (``"none"``, ``"dycoke"``, ``"holitom"``, ``"metok"``), a
mapping ``{"method": name, **settings}`` (each method's settings record says its keys; unknown
ones are refused), or a list of those to combine (each sees the same contexts; their keep-sets
intersect).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Final

import torch

from stream_agent.memory.compression.base import (
    AttentionProbe,
    ContextBlock,
    InContextCompressor,
    LayerContext,
)
from stream_agent.memory.compression.dycoke import DyCoke, DyCokeSettings
from stream_agent.memory.compression.holitom import HoliTom, HoliTomSettings
from stream_agent.memory.compression.metok import METok, METokSettings
from stream_agent.memory.compression.none import NoCompression
from stream_agent.memory.errors import MemoryConfigError
from stream_agent.memory.records import Candidate
from stream_agent.memory.runner import LayerRunner

COMPRESSORS: Final[dict[str, type[InContextCompressor]]] = {
    "none": NoCompression,
    "dycoke": DyCoke,
    "holitom": HoliTom,
    "metok": METok,
}


@dataclass(frozen=True, slots=True)
class CompressionSpec:
    """One method and its validated settings (None: the method takes none)."""

    method: str
    settings: object | None = None

    def describe(self) -> str:
        if self.settings is None:
            return self.method
        settings: Any = self.settings
        parts = ", ".join(f"{f.name}={getattr(settings, f.name)}" for f in fields(settings))
        return f"{self.method}({parts})"


def _coerce(method: str, name: str, value: Any, default: Any) -> Any:
    where = f"memory.compression {method}.{name}"
    if isinstance(default, bool) or name == "merge":
        if not isinstance(value, bool):
            raise MemoryConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if name == "layers":
        if value is None:
            return None
        if not isinstance(value, Sequence) or isinstance(value, str):
            raise MemoryConfigError(f"{where} must be a list of layer indices, got {value!r}")
        return tuple(_coerce(method, "layer", v, 0) for v in value)
    if name in ("layer", "key_events"):
        if value is None and name == "layer":
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise MemoryConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise MemoryConfigError(f"{where} must be a number, got {value!r}")
    return float(value)


def parse_one(value: Any) -> CompressionSpec:
    """One method: a name or ``{"method": name, **settings}``."""
    if isinstance(value, CompressionSpec):
        return value
    if isinstance(value, str):
        method, given = value, {}
    elif isinstance(value, Mapping):
        given = dict(value)
        method = given.pop("method", None)
        if not isinstance(method, str):
            raise MemoryConfigError(
                f"memory.compression entries need a 'method' name, got {dict(value)!r}"
            )
    else:
        raise MemoryConfigError(
            f"memory.compression must be a method name, a mapping or a list, got {value!r}"
        )
    cls = COMPRESSORS.get(method)
    if cls is None:
        raise MemoryConfigError(
            f"memory.compression must be one of {', '.join(map(repr, COMPRESSORS))}, got {method!r}"
        )
    settings_class = cls.settings_class
    if settings_class is None:
        if given:
            raise MemoryConfigError(f"memory.compression {method!r} takes no settings")
        return CompressionSpec(method)
    known = {f.name: f.default for f in fields(settings_class)}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise MemoryConfigError(
            f"unknown memory.compression {method} settings: {', '.join(unknown)} "
            f"(known: {', '.join(known)})"
        )
    values = {k: _coerce(method, k, v, known[k]) for k, v in given.items()}
    return CompressionSpec(method, settings_class(**values))


def parse_compression(value: Any) -> tuple[CompressionSpec, ...]:
    """``MemoryOptions.compression`` validated: the methods in order (``none`` dropped)."""
    items = value if isinstance(value, list | tuple) else [value]
    specs = [parse_one(v) for v in items]
    methods = [s.method for s in specs if s.method != "none"]
    if len(set(methods)) != len(methods):
        raise MemoryConfigError("memory.compression names a method twice")
    return tuple(s for s in specs if s.method != "none")


class Combined(InContextCompressor):
    """Several methods on one answer: each sees the same contexts; keep-sets intersect (the
    tokens one method thins are thinned for the others too)."""

    name = "combined"

    def __init__(self, parts: Sequence[InContextCompressor]) -> None:
        self.parts = list(parts)

    def select_tokens(
        self, layer: int, chosen: Sequence[Candidate]
    ) -> Mapping[tuple[int, int], torch.Tensor] | None:
        out: dict[tuple[int, int], torch.Tensor] = {}
        for part in self.parts:
            picked = part.select_tokens(layer, chosen)
            for key, offsets in (picked or {}).items():
                if key in out:
                    both = out[key][torch.isin(out[key], offsets)]
                    out[key] = both
                else:
                    out[key] = offsets
        return out or None

    def _narrow(self, masks: list[torch.Tensor | None]) -> torch.Tensor | None:
        keep: torch.Tensor | None = None
        for mask in masks:
            if mask is not None:
                keep = mask.clone() if keep is None else keep & mask
        return keep

    def prefill_layer(
        self, context: LayerContext, previous: AttentionProbe | None
    ) -> torch.Tensor | None:
        return self._narrow([p.prefill_layer(context, previous) for p in self.parts])

    def decode_layer(
        self, context: LayerContext, previous: AttentionProbe | None
    ) -> torch.Tensor | None:
        return self._narrow([p.decode_layer(context, previous) for p in self.parts])


def make_compressor(specs: Any, runner: LayerRunner | None = None) -> InContextCompressor:
    """A new compressor for one answer from ``MemoryOptions.compression`` (or a name)."""
    parsed = parse_compression(specs)
    if not parsed:
        return NoCompression()
    if runner is None:
        raise MemoryConfigError("a compression method needs the model's layer runner")
    parts = [COMPRESSORS[s.method].build(s.settings, runner) for s in parsed]
    return parts[0] if len(parts) == 1 else Combined(parts)


__all__ = [
    "COMPRESSORS",
    "AttentionProbe",
    "Combined",
    "CompressionSpec",
    "ContextBlock",
    "DyCoke",
    "DyCokeSettings",
    "HoliTom",
    "HoliTomSettings",
    "InContextCompressor",
    "LayerContext",
    "METok",
    "METokSettings",
    "NoCompression",
    "make_compressor",
    "parse_compression",
]
