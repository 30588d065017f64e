"""The cacher's configuration: small frozen records, validated on construction.

:class:`CacherConfig` picks the mode and carries the released STC-Cacher knobs (``paper`` mode)
plus :class:`AdaptiveOptions` (``adaptive`` mode). :func:`config_from_mapping` builds it from a
plain mapping (a YAML section) and rejects unknown keys.

Modes:

* ``"paper"`` -- STC-Cacher as released (``lern-to-write/STC``, see
  ``/work/shared/reference/methods.md`` section 1.1): every ``cache_interval``-th frame is encoded
  in full and becomes the reference; on the others each layer recomputes the
  ``update_token_ratio`` share of tokens whose key is least similar to the reference's.
* ``"adaptive"`` -- the recomputed share follows the change (a similarity threshold with a floor
  and a ceiling), an unchanged frame reuses the reference's output whole, and the reference is
  refreshed on drift, a scene change or a maximum age instead of on a schedule.
* ``"off"`` -- every frame is encoded in full; nothing is cached (a baseline, same interface).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal, get_args

import torch

from cacher.errors import ConfigurationError

Mode = Literal["off", "paper", "adaptive"]
MODES: Final[tuple[str, ...]] = get_args(Mode)

GroupLayout = Literal["consecutive", "window"]
GROUP_LAYOUTS: Final[tuple[str, ...]] = get_args(GroupLayout)

CacheDType = Literal["same", "float32", "float16", "bfloat16"]
CACHE_DTYPES: Final[tuple[str, ...]] = get_args(CacheDType)

_TORCH_DTYPES: Final[dict[str, torch.dtype]] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def _check_int(owner: str, name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{owner}.{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigurationError(f"{owner}.{name} must be at least {minimum}, got {value}")


def _check_unit(owner: str, name: str, value: object, *, low_open: bool = False) -> None:
    """``value`` must be a finite number in [0, 1] (or (0, 1] with ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(f"{owner}.{name} must be a finite number, got {value!r}")
    if value > 1 or value < 0 or (low_open and value == 0):
        bounds = "(0, 1]" if low_open else "[0, 1]"
        raise ConfigurationError(f"{owner}.{name} must be in {bounds}, got {value}")


@dataclass(frozen=True)
class AdaptiveOptions:
    """How ``adaptive`` mode decides what to recompute and when to refresh the reference.

    A token's *change* at a layer is ``1 - cos(norm1(x), norm1(x_ref))``: the cosine
    dissimilarity of the layer-normalised input the attention projections see, against the
    reference frame's input to the same layer at the same position (token groups average it).
    It costs one layer norm per token, not a projection.

    - ``token_threshold``: a token (group) whose change exceeds it is recomputed at that layer.
    - ``min_ratio`` / ``max_ratio``: floor and ceiling of the recomputed share per layer (the most
      changed tokens fill the floor; the ceiling keeps the least changed out).
    - A frame is *reused whole* (the reference's hidden states returned as they are, no layer
      run) when no token's change at the encoder input (layer 0) exceeds ``token_threshold``.
    - The frame is encoded in full and becomes the new reference when, at layer 0, the share of
      changed tokens exceeds ``max_ratio`` (``"scene_change"``: a cut or a moving camera, where
      reuse would cost about as much and lose accuracy), when the mean similarity
      (``1 - change``) of the tokens *not* counted as changed is under ``drift_similarity``
      (``"drift"``: many changes too small to recompute, such as lighting, which would otherwise
      leave a stale reference reused whole), or when the reference has served ``max_age``
      frames (``"max_age"``).
    - The reference is also refreshed when a change has come to rest (``"settled"``): tokens
      that differ from the reference but not from the previous frame (a person who walked in and
      now stands) are recomputed on every frame, yet a new reference would make them free. Each
      frame adds the share of such tokens to a running sum; when the sum reaches ``settle_cost``
      (in full frames' worth of tokens) the frame becomes the new reference -- the rent-or-buy
      rule: pay for recomputing until it has cost as much as a refresh, then refresh.

    ``max_ratio`` trades speed for fidelity: tokens the frame did not recompute do not see the
    ones it did (their attention output is the reference's), an error that grows with the share
    of changed tokens. On random-weight SigLIP encoders and the project's test clip
    (``bench/bench_cacher.py``, one thread), 0.2 kept the final tokens' mean cosine to the full
    encode at 0.997-0.999 for 2.2-3x less encoder time, 0.5 gave 2.7-4x at 0.987-0.992. The
    thresholds were set there; real weights (whose attention is less diffuse) may want others.
    """

    token_threshold: float = 0.02
    min_ratio: float = 0.0
    max_ratio: float = 0.2
    drift_similarity: float = 0.995
    max_age: int = 30
    settle_cost: float = 0.5

    def __post_init__(self) -> None:
        owner = "cacher.adaptive"
        _check_unit(owner, "token_threshold", self.token_threshold)
        _check_unit(owner, "min_ratio", self.min_ratio)
        _check_unit(owner, "max_ratio", self.max_ratio, low_open=True)
        _check_unit(owner, "drift_similarity", self.drift_similarity)
        _check_int(owner, "max_age", self.max_age, 1)
        if (
            isinstance(self.settle_cost, bool)
            or not isinstance(self.settle_cost, int | float)
            or not math.isfinite(self.settle_cost)
            or self.settle_cost <= 0
        ):
            raise ConfigurationError(
                f"{owner}.settle_cost must be a positive number, got {self.settle_cost!r}"
            )
        if self.min_ratio > self.max_ratio:
            raise ConfigurationError(
                f"{owner}.min_ratio ({self.min_ratio}) must not exceed "
                f"{owner}.max_ratio ({self.max_ratio})"
            )


@dataclass(frozen=True)
class CacherConfig:
    """One cacher configuration, shared by all streams of an encoder.

    - ``mode``: ``"paper"``, ``"adaptive"`` or ``"off"`` (see the module docstring).
    - ``cache_interval`` (paper): every N-th frame of a stream is a full reference frame
      (released default 2: frames 0, 2, 4, ... full).
    - ``update_token_ratio`` (paper): the share r of tokens (groups) recomputed at each layer of
      the other frames, ``max(1, int(groups * r))`` of them (released default 0.25).
    - ``group_size`` / ``group_layout``: tokens that are reused or recomputed together, their
      scores averaged (1 for SigLIP; 4 for Qwen2-VL, whose merger concatenates each 2x2 window of
      patches, so a window must come from one frame). ``"consecutive"``: runs of ``group_size``
      tokens in the encoder's order (the library's merge-window order); ``"window"``: square
      windows of ``sqrt(group_size)`` a side over a raster-ordered patch grid, which each frame
      then passes as ``grid`` (the project's Qwen2-VL adapter keeps raster order).
    - ``cache_dtype``: dtype of the cached per-layer tensors (``"same"`` = the encoder's).
      ``"float16"`` halves a stream's memory; it is meant for GPUs (on a CPU the casts cost time,
      and the cached values lose precision, so reuse is no longer bit-exact with the reference).
    - ``adaptive``: the options of ``adaptive`` mode.
    - ``yield_every``: layers per group between calls of an encode's ``yield_point`` (the
      engine's chance to serve a waiting question mid-frame). 2: on SigLIP-so400m's 26 layers a
      group is ~0.4 s of fp32 time on a quiet 2-core CPU (~0.2 s in int8), 12 calls a frame; a
      call that finds no question waiting costs a queue check.
    """

    mode: Mode = "adaptive"
    cache_interval: int = 2
    update_token_ratio: float = 0.25
    group_size: int = 1
    group_layout: GroupLayout = "consecutive"
    cache_dtype: CacheDType = "same"
    adaptive: AdaptiveOptions = field(default_factory=AdaptiveOptions)
    yield_every: int = 2

    def __post_init__(self) -> None:
        owner = "cacher"
        if self.mode not in MODES:
            raise ConfigurationError(
                f"{owner}.mode must be one of {', '.join(MODES)}; got {self.mode!r}"
            )
        _check_int(owner, "cache_interval", self.cache_interval, 1)
        _check_unit(owner, "update_token_ratio", self.update_token_ratio, low_open=True)
        _check_int(owner, "group_size", self.group_size, 1)
        _check_int(owner, "yield_every", self.yield_every, 1)
        if self.group_layout not in GROUP_LAYOUTS:
            raise ConfigurationError(
                f"{owner}.group_layout must be one of {', '.join(GROUP_LAYOUTS)}; "
                f"got {self.group_layout!r}"
            )
        if self.group_layout == "window" and math.isqrt(self.group_size) ** 2 != self.group_size:
            raise ConfigurationError(
                f"{owner}.group_size must be a square number (4 for 2x2 windows) with "
                f"group_layout='window', got {self.group_size}"
            )
        if self.cache_dtype not in CACHE_DTYPES:
            raise ConfigurationError(
                f"{owner}.cache_dtype must be one of {', '.join(CACHE_DTYPES)}; "
                f"got {self.cache_dtype!r}"
            )
        if not isinstance(self.adaptive, AdaptiveOptions):
            raise ConfigurationError(
                f"{owner}.adaptive must be an AdaptiveOptions record, got {self.adaptive!r}"
            )

    def storage_dtype(self, compute: torch.dtype) -> torch.dtype:
        """The dtype cached tensors are kept in for an encoder computing in ``compute``."""
        return compute if self.cache_dtype == "same" else _TORCH_DTYPES[self.cache_dtype]

    @property
    def window_side(self) -> int:
        """Side of a group window (``group_layout="window"``)."""
        return math.isqrt(self.group_size)


def _from_section(cls: type[Any], owner: str, section: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(section, Mapping):
        raise ConfigurationError(f"{owner} must be a mapping, got {section!r}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ConfigurationError(
            f"unknown {owner} option(s) {', '.join(map(str, unknown))}; "
            f"known: {', '.join(sorted(known))}"
        )
    return dict(section)


def config_from_mapping(section: Mapping[str, Any]) -> CacherConfig:
    """A :class:`CacherConfig` from a plain mapping (``adaptive`` given as a nested mapping)."""
    values = _from_section(CacherConfig, "cacher", section)
    if "adaptive" in values and not isinstance(values["adaptive"], AdaptiveOptions):
        values["adaptive"] = AdaptiveOptions(
            **_from_section(AdaptiveOptions, "cacher.adaptive", values["adaptive"])
        )
    return CacherConfig(**values)
